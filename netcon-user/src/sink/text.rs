//! The default human-readable line for each event.
//!
//! ```text
//! 2026-11-27T21:53:56.123456Z 10.77.0.10 kern.info [    4.373204] text
//! ```
//!
//! Receive time (UTC, microseconds), sender address, `facility.level` (syslog names; `-` in plain
//! mode, which does not carry them), the sender's kernel timestamp as the kernel prints it, then
//! the text. Extra lines of a multi-line record are indented under the first. Every byte that
//! came off the network goes through [`escape_into`], so a spoofed datagram cannot drive the
//! terminal. Loss, reboot, malformed datagrams and incomplete records are marked so that they
//! stand out: `--` in the priority column and capitals. Duplicates print nothing (they are
//! counted in the decoder's stats): on a mirror port or two interfaces every record would
//! otherwise be followed by a line saying so.

use std::fmt::Write as _;
use std::net::SocketAddr;

use chrono::{DateTime, Utc};

use super::escape::escape_into;
use crate::netconsole::{Event, LossKind, Record};
use crate::notice::{HookOutcome, Notice};

/// Appends the line(s) for `event` to `out`, each ending in `\n` (none for a duplicate).
pub fn write_event(event: &Event, out: &mut String) {
    match event {
        Event::Record(r) => write_record(r, out),
        Event::Lost(l) => {
            write_prefix(l.received, l.sender, out);
            let what = match l.kind {
                LossKind::Seq => ("records", "seq"),
                LossKind::Msgid => ("messages", "msgid"),
            };
            let _ = write!(
                out,
                "-- LOST {} {} ({} {}",
                l.count, what.0, what.1, l.first
            );
            if l.last != l.first {
                let _ = write!(out, "..{}", l.last);
            }
            out.push_str(")\n");
        }
        Event::Rebooted(r) => {
            write_prefix(r.received, r.sender, out);
            out.push_str("-- REBOOTED");
            match (r.previous_seq, r.seq) {
                (Some(a), Some(b)) => {
                    let _ = write!(out, " (seq {a} -> {b})");
                }
                _ => {
                    if let (Some(a), Some(b)) = (r.previous_timestamp_us, r.timestamp_us) {
                        out.push_str(" (kernel time ");
                        write_seconds(a, out);
                        out.push_str(" -> ");
                        write_seconds(b, out);
                        out.push(')');
                    }
                }
            }
            out.push('\n');
        }
        Event::Malformed(m) => {
            write_prefix(m.received, m.sender, out);
            let _ = write!(out, "-- MALFORMED ({}): ", m.error);
            escape_into(&m.payload, out);
            out.push('\n');
        }
        Event::Duplicate(_) => {}
    }
}

/// Appends the line for one of netcon-sniff's own notices, ending in `\n`:
///
/// ```text
/// 2026-11-27T21:53:56.123456Z -- CAPTURE LOST 15631 frames on eth1 (ring buffer full)
/// 2026-11-27T21:53:56.123456Z -- CAPTURE LOST 9000 frames from 10.1.0.5 on eth1 (capture queue full)
/// 2026-11-27T21:53:57.000001Z 10.77.0.10 -- PANIC HOOK LATE (waited 2.504 s for a slot)
/// 2026-11-27T21:53:58.000002Z -- FORWARD LOST 120 messages (nats://10.1.0.5:4222/netcon)
/// ```
pub fn write_notice(notice: &Notice, out: &mut String) {
    match notice {
        Notice::CaptureLost(lost) => {
            write_time(lost.noticed, out);
            let _ = write!(out, " -- CAPTURE LOST {} frames", lost.frames);
            if let Some(sender) = lost.sender {
                let _ = write!(out, " from {sender}");
            }
            let _ = writeln!(out, " on {} ({})", lost.interface, lost.reason.describe());
        }
        Notice::Hook(hook) => {
            write_prefix(hook.at, hook.sender, out);
            let _ = match hook.outcome {
                HookOutcome::Skipped(why) => {
                    writeln!(out, "-- PANIC HOOK SKIPPED ({})", why.describe())
                }
                HookOutcome::Late { waited } => writeln!(
                    out,
                    "-- PANIC HOOK LATE (waited {:.3} s for a slot)",
                    waited.as_secs_f64()
                ),
                HookOutcome::TimedOut { after } => writeln!(
                    out,
                    "-- PANIC HOOK TIMED OUT (still running after {} s; killed)",
                    after.as_secs()
                ),
            };
        }
        Notice::ForwardLost(lost) => {
            write_time(lost.noticed, out);
            let _ = writeln!(
                out,
                " -- FORWARD LOST {} messages ({})",
                lost.messages, lost.url
            );
        }
    }
}

/// [`write_notice`] into a new `String`.
#[must_use]
pub fn format_notice(notice: &Notice) -> String {
    let mut out = String::new();
    write_notice(notice, &mut out);
    out
}

/// [`write_event`] into a new `String`.
#[must_use]
pub fn format_event(event: &Event) -> String {
    let mut out = String::new();
    write_event(event, &mut out);
    out
}

fn write_record(r: &Record, out: &mut String) {
    let line_start = out.len();
    write_prefix(r.received, r.sender, out);
    match r.priority {
        Some(p) => {
            match p.facility_name() {
                Some(name) => out.push_str(name),
                None => {
                    let _ = write!(out, "fac{}", p.facility);
                }
            }
            out.push('.');
            out.push_str(p.level_name());
        }
        None => out.push('-'),
    }
    out.push(' ');
    if let Some(ts) = r.timestamp_us {
        // `[%5lu.%06lu]`, as `kernel/printk/printk.c` (`print_time`) prints it.
        out.push('[');
        push_decimal_aligned(ts / 1_000_000, 5, out);
        out.push('.');
        push_decimal(ts % 1_000_000, 6, out);
        out.push_str("] ");
    }
    if let Some(p) = r.flags.panic {
        if p.begins {
            let _ = write!(out, "<{} #{}> ", p.kind.as_str().to_uppercase(), p.event);
        } else {
            let _ = write!(out, "<{} #{}> ", p.kind.as_str(), p.event);
        }
    }
    if let Some(inc) = r.flags.incomplete {
        let _ = write!(
            out,
            "<INCOMPLETE: {} of {} bytes missing> ",
            inc.missing_bytes, inc.total_bytes
        );
    }
    if r.flags.partial {
        out.push_str("<partial line> ");
    }
    // Column width of the prefix, for indenting the extra lines (the prefix is ASCII).
    let indent = out.len() - line_start;
    for (i, line) in r.lines().enumerate() {
        if i > 0 {
            out.push('\n');
            out.extend(std::iter::repeat_n(' ', indent));
        }
        escape_into(line, out);
    }
    out.push('\n');
}

/// Appends `RECEIVED SENDER ` (the start of every line).
pub fn write_prefix(received: DateTime<Utc>, sender: SocketAddr, out: &mut String) {
    write_time(received, out);
    out.push(' ');
    match sender.ip() {
        // By hand: `Display` for an address goes through the formatter four times.
        std::net::IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                push_decimal(u64::from(octet), 1, out);
            }
        }
        std::net::IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
    out.push(' ');
}

thread_local! {
    /// `YYYY-MM-DDTHH:MM:SS.` of the second last written, and that second (Unix time): records
    /// arrive many to a second, and the calendar arithmetic is most of a line's time.
    static SECOND_PREFIX: std::cell::Cell<(i64, [u8; 20])> = const {
        std::cell::Cell::new((i64::MIN, [0; 20]))
    };
}

/// Appends `received` as RFC 3339 UTC with microseconds (`2026-11-27T21:53:56.123456Z`).
pub(super) fn write_time(received: DateTime<Utc>, out: &mut String) {
    use chrono::{Datelike as _, Timelike as _};
    let micros = received.timestamp_subsec_micros();
    let second = received.timestamp();
    // chrono keeps a leap second as second 59 with 1_000_000_000+ nanoseconds; print it as 60.
    // Years outside 0..=9999 do not fit 4 digits (and are never cached). Both are left to the
    // general path.
    if micros < 1_000_000 {
        let (cached_second, prefix) = SECOND_PREFIX.get();
        let prefix = if cached_second == second {
            prefix
        } else if (0..=9999).contains(&received.year()) {
            let mut text = String::with_capacity(20);
            let _ = write!(
                text,
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.",
                received.year(),
                received.month(),
                received.day(),
                received.hour(),
                received.minute(),
                received.second(),
            );
            let mut prefix = [0; 20];
            prefix.copy_from_slice(text.as_bytes());
            SECOND_PREFIX.set((second, prefix));
            prefix
        } else {
            write_time_general(received, out);
            return;
        };
        if let Ok(prefix) = std::str::from_utf8(&prefix) {
            out.push_str(prefix);
            push_decimal(u64::from(micros), 6, out);
            out.push('Z');
            return;
        }
    }
    write_time_general(received, out);
}

/// [`write_time`] without the cache, for any time chrono holds.
fn write_time_general(received: DateTime<Utc>, out: &mut String) {
    use chrono::{Datelike as _, Timelike as _};
    let (second, micros) = match received.timestamp_subsec_micros() {
        m if m >= 1_000_000 => (60, m - 1_000_000),
        m => (received.second(), m),
    };
    // Field by field rather than `format("%Y-...")`, which parses its pattern for every record.
    let _ = write!(
        out,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{second:02}.{micros:06}Z",
        received.year(),
        received.month(),
        received.day(),
        received.hour(),
        received.minute(),
    );
}

/// Appends `value` in decimal, zero-padded to at least `width` digits (as `{:0width$}`).
fn push_decimal(value: u64, width: usize, out: &mut String) {
    // itoa writes two digits per step from a table: the loop of `% 10` it replaced was 5% of
    // the reader's time (seven numbers a line).
    let mut buffer = itoa::Buffer::new();
    let digits = buffer.format(value);
    out.extend(std::iter::repeat_n('0', width.saturating_sub(digits.len())));
    out.push_str(digits);
}

/// Appends `value` in decimal, right-aligned with spaces to at least `width` columns (as
/// `{:width$}`).
fn push_decimal_aligned(value: u64, width: usize, out: &mut String) {
    let len = value.checked_ilog10().map_or(1, |log| log as usize + 1);
    out.extend(std::iter::repeat_n(' ', width.saturating_sub(len)));
    push_decimal(value, 1, out);
}

fn write_seconds(us: u64, out: &mut String) {
    let _ = write!(out, "{}.{:06}", us / 1_000_000, us % 1_000_000);
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::netconsole::{
        DecodeError, Duplicate, ExtendedError, Incomplete, Lost, Malformed, PanicKind, PanicMark,
        Priority, Rebooted, RecordFormat,
    };

    fn at() -> DateTime<Utc> {
        DateTime::from_timestamp_micros(1_795_817_636_123_456).unwrap_or_default()
    }

    fn sender() -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 77, 0, 10)), 6665)
    }

    fn record(text: &[u8]) -> Record {
        Record::example(text)
    }

    #[test]
    fn prefix_matches_chrono_formatting_including_leap_seconds() {
        for (secs, nanos) in [
            (0, 0),
            (1_795_817_636, 123_456_789),
            (1_483_228_799, 1_999_999_000),
        ] {
            let t = DateTime::from_timestamp(secs, nanos).unwrap();
            let mut ours = String::new();
            write_prefix(t, sender(), &mut ours);
            assert_eq!(
                ours,
                format!("{} 10.77.0.10 ", t.format("%Y-%m-%dT%H:%M:%S%.6fZ"))
            );
        }
    }

    proptest::proptest! {
        /// The cached second and hand-written digits give what the formatter gives, for times
        /// in any order (the cache must notice every change of second) and any sender.
        #[test]
        fn fast_prefix_agrees_with_the_formatter(
            base in -62_135_596_800i64..253_402_300_700,
            times in proptest::collection::vec((0i64..3, 0u32..2_000_000_000), 1..8),
            ip in proptest::prelude::any::<[u8; 4]>(),
        ) {
            let sender = SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), 6665);
            // Seconds close together, in any order: the same second again, the next, back.
            for (delta, nanos) in times {
                let secs = base + delta;
                // A leap second only where chrono allows one (second 59).
                let nanos = if secs.rem_euclid(60) == 59 { nanos } else { nanos % 1_000_000_000 };
                let Some(t) = DateTime::from_timestamp(secs, nanos) else { continue };
                let mut fast = String::new();
                write_prefix(t, sender, &mut fast);
                let mut general = String::new();
                write_time_general(t, &mut general);
                proptest::prop_assert_eq!(fast, format!("{general} {} ", sender.ip()));
            }
        }

        /// `[%5lu.%06lu]` by hand equals the formatter's `{:5}.{:06}`.
        #[test]
        fn kernel_time_digits_agree_with_the_formatter(ts in proptest::prelude::any::<u64>()) {
            let mut r = record(b"x");
            r.timestamp_us = Some(ts);
            let line = format_event(&Event::Record(r));
            let expected = format!("[{:5}.{:06}] x\n", ts / 1_000_000, ts % 1_000_000);
            proptest::prop_assert!(line.ends_with(&expected), "{} {}", line, expected);
        }
    }

    #[test]
    fn decimal_digits_pad_and_align() {
        let mut out = String::new();
        push_decimal(0, 1, &mut out);
        push_decimal(7, 6, &mut out);
        push_decimal(u64::MAX, 1, &mut out);
        push_decimal_aligned(0, 5, &mut out);
        push_decimal_aligned(123_456, 5, &mut out);
        assert_eq!(out, format!("0000007{}    0123456", u64::MAX));
    }

    proptest::proptest! {
        /// As `format!` pads: zeros to `width` digits, spaces to `width` columns.
        #[test]
        fn decimals_are_formatted_as_format_does(value in proptest::prelude::any::<u64>(), width in 0usize..24) {
            let mut zeros = String::new();
            push_decimal(value, width, &mut zeros);
            proptest::prop_assert_eq!(zeros, format!("{value:0width$}"));
            let mut spaces = String::new();
            push_decimal_aligned(value, width, &mut spaces);
            proptest::prop_assert_eq!(spaces, format!("{value:width$}"));
        }
    }

    #[test]
    fn record_line_matches_the_documented_shape() {
        let line = format_event(&Event::Record(record(b"hello")));
        assert_eq!(
            line,
            "2026-11-27T22:13:56.123456Z 10.77.0.10 kern.info [    4.373204] hello\n"
        );
    }

    #[test]
    fn user_facility_and_unknown_facility() {
        let mut r = record(b"x");
        r.priority = Priority::from_pri(14);
        assert!(format_event(&Event::Record(r.clone())).contains(" user.info "));
        r.priority = Priority::from_pri(30 * 8 + 3);
        assert!(format_event(&Event::Record(r)).contains(" fac30.err "));
    }

    #[test]
    fn plain_record_has_no_priority() {
        let mut r = record(b"x");
        r.format = RecordFormat::Plain;
        r.priority = None;
        r.timestamp_us = None;
        assert!(format_event(&Event::Record(r)).ends_with("10.77.0.10 - x\n"));
    }

    #[test]
    fn extra_lines_are_indented_under_the_first() {
        let line = format_event(&Event::Record(record(b"one\ntwo\nthree")));
        let lines: Vec<&str> = line.lines().collect();
        assert_eq!(lines.len(), 3);
        let col = lines[0].find("one").unwrap_or_default();
        assert_eq!(&lines[1][..col], " ".repeat(col));
        assert_eq!(&lines[1][col..], "two");
        assert_eq!(&lines[2][col..], "three");
    }

    #[test]
    fn control_bytes_never_reach_the_terminal() {
        let line = format_event(&Event::Record(record(
            b"red \x1b[31m\rbell\x07 \xff \xc2\x9b2J",
        )));
        assert!(
            !line.trim_end_matches('\n').chars().any(char::is_control),
            "{line:?}"
        );
        assert!(
            line.contains("\\u{1b}[31m\\rbell\\u{7} \\xff \\u{9b}2J"),
            "{line:?}"
        );
    }

    #[test]
    fn flags_are_marked() {
        let mut r = record(b"partial text");
        r.flags.incomplete = Some(Incomplete {
            missing_bytes: 120,
            total_bytes: 3814,
        });
        r.flags.partial = true;
        r.flags.panic = Some(PanicMark {
            event: 2,
            kind: PanicKind::Oops,
            begins: true,
        });
        let line = format_event(&Event::Record(r));
        assert!(
            line.contains(
                "<OOPS #2> <INCOMPLETE: 120 of 3814 bytes missing> <partial line> partial text"
            ),
            "{line}"
        );
    }

    #[test]
    fn notices_have_their_own_lines() {
        use crate::notice::{CaptureLost, HookNotice, LossReason, SkipReason};
        let lost = Notice::CaptureLost(CaptureLost {
            noticed: at(),
            interface: "eth1".into(),
            reason: LossReason::RingFull,
            frames: 15_631,
            sender: None,
        });
        assert_eq!(
            format_notice(&lost),
            "2026-11-27T22:13:56.123456Z -- CAPTURE LOST 15631 frames on eth1 (ring buffer full)\n"
        );
        let queue_drop = Notice::CaptureLost(CaptureLost {
            noticed: at(),
            interface: "eth1".into(),
            reason: LossReason::QueueFull,
            frames: 9000,
            sender: Some(crate::notice::SourcePrefix::of([10, 1, 0, 5].into())),
        });
        assert_eq!(
            format_notice(&queue_drop),
            "2026-11-27T22:13:56.123456Z -- CAPTURE LOST 9000 frames from 10.1.0.5 on eth1 \
             (capture queue full)\n"
        );
        let hook = |outcome| {
            format_notice(&Notice::Hook(HookNotice {
                at: at(),
                sender: sender(),
                outcome,
            }))
        };
        assert!(
            hook(HookOutcome::Skipped(SkipReason::QueueFull)).ends_with(
                " 10.77.0.10 -- PANIC HOOK SKIPPED (every slot busy and the queue full)\n"
            )
        );
        assert!(
            hook(HookOutcome::Late {
                waited: std::time::Duration::from_millis(2504)
            })
            .ends_with("-- PANIC HOOK LATE (waited 2.504 s for a slot)\n")
        );
        assert!(
            hook(HookOutcome::TimedOut {
                after: std::time::Duration::from_mins(1)
            })
            .ends_with("-- PANIC HOOK TIMED OUT (still running after 60 s; killed)\n")
        );
        let forward = Notice::ForwardLost(crate::notice::ForwardLost {
            noticed: at(),
            url: "nats://10.1.0.5:4222/netcon".into(),
            messages: 120,
            first_dropped: at(),
        });
        assert_eq!(
            format_notice(&forward),
            "2026-11-27T22:13:56.123456Z -- FORWARD LOST 120 messages (nats://10.1.0.5:4222/netcon)\n"
        );
    }

    #[test]
    fn loss_reboot_malformed_lines() {
        let lost = Event::Lost(Lost {
            received: at(),
            sender: sender(),
            ifindex: 2,
            kind: LossKind::Seq,
            first: 100,
            last: 102,
            count: 3,
        });
        assert!(format_event(&lost).ends_with("10.77.0.10 -- LOST 3 records (seq 100..102)\n"));
        let reboot = Event::Rebooted(Rebooted {
            received: at(),
            sender: sender(),
            ifindex: 2,
            previous_seq: Some(590),
            seq: Some(0),
            previous_timestamp_us: Some(6_456_131),
            timestamp_us: Some(0),
        });
        assert!(format_event(&reboot).ends_with("-- REBOOTED (seq 590 -> 0)\n"));
        let bad = Event::Malformed(Malformed {
            received: at(),
            sender: sender(),
            ifindex: 2,
            error: DecodeError::Extended {
                source: ExtendedError::MissingSemicolon,
            },
            payload: b"6,1,2,-\x1b]0;x\n".to_vec(),
        });
        let line = format_event(&bad);
        assert!(line.contains("-- MALFORMED (bad extended header: no `;` closes the header): 6,1,2,-\\u{1b}]0;x\\n\n"), "{line}");
        let dup = Event::Duplicate(Duplicate {
            received: at(),
            sender: sender(),
            ifindex: 3,
            len: 10,
        });
        assert_eq!(format_event(&dup), "");
    }
}
