//! `--forward` against a real rsyslog: the real `netcon-sniff -r` on the real kernel
//! capture `ext.pcap` forwards over UDP and TCP to Debian's rsyslogd on loopback, and the tests
//! check what rsyslog wrote. Expectations come from `ext.expected.json` (what the guest wrote),
//! not from the binary's own decoding.
//!
//! Needs `rsyslogd` (Debian's `rsyslog`); no privileges, no namespaces, loopback only.

use std::fmt::Write as _;
use std::process::Command;
use std::time::Duration;

mod common;

use common::expected::{self, ExpectedRecord};
use netcon_testkit::rsyslog::{Input, Rsyslog};
use netcon_testkit::{STATS_PREFIX, fixture, run_bounded, sniff_binary};

/// Deadline for one `netcon-sniff -r` run (a failure deadline; it takes well under a second,
/// plus the forwarder's 2 s shutdown grace when a server is down).
const RUN_TIMEOUT: Duration = Duration::from_mins(1);
/// Deadline for rsyslog to write everything that was forwarded.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);
/// The sender in the capture (its README).
const SENDER: &str = "10.77.0.10";
const SENDER_PORT: u16 = 6665;

/// Every record of `ext.expected.json` the kernel logged (not those whose write was
/// `rejected`).
fn expected_records() -> Vec<ExpectedRecord> {
    let records: Vec<ExpectedRecord> = expected::expected_records("ext")
        .into_iter()
        .filter(|r| !r.rejected)
        .collect();
    assert!(
        records.len() > 200,
        "only {} records in ext.expected.json",
        records.len()
    );
    records
}

/// What rsyslog writes for a record's text: netcon-sniff escapes bytes that are not UTF-8 as
/// `\xNN` (and other control characters, none in the fixture), rsyslog then shows LF and TAB as
/// `#012` and `#011`.
fn as_rsyslog_writes(text: &[u8]) -> String {
    let mut out = String::new();
    for chunk in text.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\n' => out.push_str("#012"),
                '\t' => out.push_str("#011"),
                c if c.is_control() => panic!("the fixture has a control character {c:?}"),
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

/// `facility.severity` as rsyslog names them, for a record written to `/dev/kmsg` with `<prio>`:
/// facility 0 there means `user` (`kernel/printk/printk.c`, `devkmsg_write`: userspace cannot
/// log as the kernel).
fn priority_name(prio: u8) -> String {
    let facility = match prio >> 3 {
        0 | 1 => "user",
        3 => "daemon",
        other => panic!("the fixture has no facility {other}"),
    };
    let severity = [
        "emerg", "alert", "crit", "err", "warning", "notice", "info", "debug",
    ][usize::from(prio & 7)];
    format!("{facility}.{severity}")
}

/// One line rsyslog wrote: `HOST FACILITY.SEVERITY SD MSG`.
#[derive(Debug)]
struct Line<'a> {
    host: &'a str,
    priority: &'a str,
    sd: &'a str,
    msg: &'a str,
}

impl<'a> Line<'a> {
    fn parse(line: &'a str) -> Line<'a> {
        let (host, rest) = line.split_once(' ').expect("HOST");
        let (priority, rest) = rest.split_once(' ').expect("PRIORITY");
        // The SD ends at the first `]` that is neither escaped nor inside a quoted value.
        let (mut quoted, mut escaped, mut end) = (false, false, None);
        for (i, b) in rest.bytes().enumerate() {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => quoted = !quoted,
                b']' if !quoted => {
                    end = Some(i);
                    break;
                }
                _ => {}
            }
        }
        let end = end.unwrap_or_else(|| panic!("no structured data in {line:?}"));
        let sd = &rest[..=end];
        let msg = rest[end + 1..]
            .strip_prefix(' ')
            .unwrap_or(&rest[end + 1..]);
        Line {
            host,
            priority,
            sd,
            msg,
        }
    }

    /// The value of SD param `name` (no escapes in the values checked here).
    fn param(&self, name: &str) -> Option<&'a str> {
        let start = self.sd.find(&format!(" {name}=\""))? + name.len() + 3;
        let len = self.sd[start..].find('"')?;
        Some(&self.sd[start..start + len])
    }
}

/// Runs `netcon-sniff ARGS` to its end; checks it exits 0 and returns stdout and stderr (ANSI
/// colors removed).
fn sniff(args: &[&str]) -> (String, String) {
    let output = run_bounded(
        Command::new(sniff_binary())
            .args(args)
            .env("NETCON_LOG", "warn")
            .env("NO_COLOR", "1"),
        RUN_TIMEOUT,
    );
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = strip_ansi(&String::from_utf8_lossy(&output.stderr));
    assert_eq!(
        output.status.code(),
        Some(0),
        "netcon-sniff {args:?} exited with {}; stderr:\n{stderr}",
        output.status
    );
    (stdout, stderr)
}

fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: ESC [ parameters final-byte.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The value of `name=` in the exit stats line; the `nth` occurrence (forwarders append their
/// counters in `--forward` order).
fn stat(stderr: &str, name: &str, nth: usize) -> u64 {
    let line = stderr
        .lines()
        .find(|l| l.starts_with(STATS_PREFIX))
        .unwrap_or_else(|| panic!("no stats line in:\n{stderr}"));
    line.split_whitespace()
        .filter_map(|pair| pair.strip_prefix(&format!("{name}=")))
        .nth(nth)
        .unwrap_or_else(|| panic!("no {name} (#{nth}) in {line}"))
        .parse()
        .unwrap_or_else(|e| panic!("{name} in {line}: {e}"))
}

/// Checks what rsyslog wrote for one transport: one line per forwarded record, every line from
/// the sender with netcon's structured data, and each record of the guest's exactly once with
/// its text, facility, severity, sequence number and kernel time. With `ordered`, in the order
/// the kernel logged them (TCP is a stream; UDP on loopback does not promise it).
fn check_delivery(lines: &[String], records: usize, ordered: bool) {
    assert_eq!(
        lines.len(),
        records,
        "rsyslog wrote {} lines for {records} records",
        lines.len()
    );
    let parsed: Vec<Line<'_>> = lines.iter().map(|l| Line::parse(l)).collect();
    let sender = format!("{SENDER}:{SENDER_PORT}");
    for line in &parsed {
        assert_eq!(line.host, SENDER, "{line:?}");
        assert!(line.sd.starts_with("[netcon@32473 seq=\""), "{line:?}");
        assert_eq!(line.param("sender"), Some(sender.as_str()), "{line:?}");
        assert!(line.param("ktime").is_some(), "{line:?}");
    }
    let mut last: Option<(usize, u64)> = None;
    for want in expected_records() {
        let msg = as_rsyslog_writes(&want.text);
        let found: Vec<(usize, &Line<'_>)> = parsed
            .iter()
            .enumerate()
            .filter(|(_, l)| l.msg == msg)
            .collect();
        let [(index, line)] = found[..] else {
            panic!(
                "{}: expected exactly one line with {msg:?}, found {}: {found:#?}",
                want.name,
                found.len()
            );
        };
        assert_eq!(
            line.priority,
            priority_name(want.prio),
            "{}: {line:?}",
            want.name
        );
        let seq: u64 = line
            .param("seq")
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{}: no seq in {line:?}", want.name));
        if let Some((last_index, last_seq)) = last {
            assert!(seq > last_seq, "{}: seq {seq} after {last_seq}", want.name);
            if ordered {
                assert!(index > last_index, "{}: out of order: {line:?}", want.name);
            }
        }
        last = Some((index, seq));
    }
}

/// Forwards the capture to rsyslog over `transport` and checks what it wrote.
fn forward_fixture(transport: &str) {
    let mut rsyslog = Rsyslog::start();
    let input = match transport {
        "udp" => Input::Udp,
        _ => Input::Tcp,
    };
    let port = rsyslog.port(input);
    let pcap = fixture("ext.pcap");
    let url = format!("syslog+{transport}://127.0.0.1:{port}");
    let (stdout, stderr) = sniff(&["-r", pcap.to_str().expect("UTF-8 path"), "--forward", &url]);
    // Capture and stdout are not affected by forwarding.
    assert!(
        stdout.contains("NCT-202a75 END of test records"),
        "{stdout}"
    );
    assert!(!stderr.contains("WARN"), "warnings:\n{stderr}");
    let records = usize::try_from(stat(&stderr, "records", 0)).expect("count");
    assert!(records > 500, "{stderr}");
    let got = rsyslog.wait_for(|r| r.lines(input), |l| l.len() >= records, DELIVERY_TIMEOUT);
    check_delivery(&got, records, transport == "tcp");
}

#[test]
fn udp_delivers_every_record_to_rsyslog() {
    forward_fixture("udp");
}

#[test]
fn tcp_delivers_every_record_to_rsyslog_in_order() {
    forward_fixture("tcp");
}

/// A server that is down: capture and the other forwarder carry on, and every message for the
/// dead one is counted (queued while capture runs, dropped at exit after the grace period).
#[test]
fn dead_tcp_server_does_not_stop_capture_or_other_forwarders() {
    let mut rsyslog = Rsyslog::start();
    let dead = std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let pcap = fixture("ext.pcap");
    let dead_url = format!("syslog+tcp://127.0.0.1:{dead}");
    let live_url = format!("syslog+udp://127.0.0.1:{}", rsyslog.port(Input::Udp));
    let (stdout, stderr) = sniff(&[
        "-r",
        pcap.to_str().expect("UTF-8 path"),
        "--forward",
        &dead_url,
        "--forward",
        &live_url,
    ]);
    for want in expected_records() {
        let first_line = want.text.split(|&b| b == b'\n').next().unwrap_or_default();
        let shown = String::from_utf8_lossy(first_line);
        let shown = shown.split('\u{fffd}').next().unwrap_or_default();
        assert!(
            stdout.contains(shown.replace('\t', "\\t").as_str()),
            "{} missing from stdout",
            want.name
        );
    }
    let records = stat(&stderr, "records", 0);
    // The dead server's counters come first (--forward order): nothing sent, everything
    // queued or dropped when the stats were taken.
    assert_eq!(stat(&stderr, "forward_sent", 0), 0, "{stderr}");
    assert_eq!(
        stat(&stderr, "forward_dropped", 0) + stat(&stderr, "forward_queued", 0),
        records,
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("url={dead_url}"))
            && stderr.contains("cannot connect to the syslog server"),
        "no warning about the dead server:\n{stderr}"
    );
    let closing = stderr
        .lines()
        .find(|l| l.contains("some messages were not delivered"))
        .unwrap_or_else(|| panic!("no warning about undelivered messages:\n{stderr}"));
    assert!(
        closing.contains(&format!("url={dead_url}"))
            && closing.contains(" sent=0 ")
            && closing.contains(&format!(" dropped={records} ")),
        "{closing}"
    );
    // What the dead server never got is a notice in the output stream, not only a counter.
    let noticed: u64 = stdout
        .lines()
        .filter_map(|l| {
            let rest = l.split_once(" -- FORWARD LOST ")?.1;
            let (n, url) = rest.split_once(" messages ")?;
            assert_eq!(url, format!("({dead_url})"), "{l}");
            n.parse::<u64>().ok()
        })
        .sum();
    assert_eq!(
        noticed, records,
        "FORWARD LOST notices on stdout:\n{stdout}"
    );
    // The live forwarder delivered everything regardless.
    let records = usize::try_from(records).expect("count");
    let got = rsyslog.wait_for(
        |r| r.lines(Input::Udp),
        |l| l.len() >= records,
        DELIVERY_TIMEOUT,
    );
    check_delivery(&got, records, false);
}
