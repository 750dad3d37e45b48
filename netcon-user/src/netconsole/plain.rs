//! Plain mode: line assembly per sender, and the `[    t.tttttt] ` prefix.
//!
//! `drivers/net/netconsole.c` (`write_msg`) sends what the console layer hands it, cut into
//! payloads of at most 1000 bytes (`MAX_PRINT_CHUNK`) with no marker. The console layer hands
//! over one record at a time, formatted by `kernel/printk/printk.c` (`record_print_text`): every
//! line of a multi-line record gets the prefix, and the record ends with `\n`. So a payload that
//! ends with `\n` ends a record; one that does not continues in the next payload from the same
//! sender; and a pending partial line is flushed after an idle timeout.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::record::Caller;

/// Bytes of one or more plain lines, ready to become a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lines {
    /// Capture time of the first payload.
    pub received: DateTime<Utc>,
    /// Interface of the first payload.
    pub ifindex: u32,
    /// The bytes, without the final `\n`.
    pub bytes: Vec<u8>,
    /// The last line never got its `\n`.
    pub partial: bool,
}

/// Per-sender plain line assembly.
#[derive(Debug, Default)]
pub struct LineAssembler {
    buf: Vec<u8>,
    start: Option<(DateTime<Utc>, u32, Instant)>,
    deadline: Option<Instant>,
}

impl LineAssembler {
    /// When the pending partial line is due, if there is one.
    #[must_use]
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Bytes pending.
    #[must_use]
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Bytes held (the buffer at its capacity).
    #[must_use]
    pub fn held_bytes(&self) -> usize {
        self.buf.capacity()
    }

    /// When the pending bytes began to arrive, if any are pending.
    #[must_use]
    pub fn started(&self) -> Option<Instant> {
        self.start
            .map(|(_, _, at)| at)
            .filter(|_| !self.buf.is_empty())
    }

    /// Adds a payload. Complete lines are returned through `out`; a tail without `\n` waits for
    /// the next payload, at most `idle` and `max_bytes` (then it is emitted, marked partial).
    #[expect(
        clippy::too_many_arguments,
        reason = "plain inputs, called from one place"
    )]
    pub fn push(
        &mut self,
        now: Instant,
        received: DateTime<Utc>,
        ifindex: u32,
        payload: &[u8],
        idle: Duration,
        max_bytes: usize,
        out: &mut Vec<Lines>,
    ) {
        if !self.buf.is_empty() && self.buf.len() + payload.len() > max_bytes {
            self.take(true, out);
        }
        if self.buf.is_empty() {
            self.start = Some((received, ifindex, now));
        }
        self.buf.extend_from_slice(payload);
        if self.buf.last() == Some(&b'\n') {
            self.take(false, out);
        } else {
            self.deadline = Some(now + idle);
        }
    }

    /// Emits the pending bytes if their deadline has passed.
    pub fn poll(&mut self, now: Instant, out: &mut Vec<Lines>) {
        if self.deadline.is_some_and(|d| d <= now) {
            self.flush(out);
        }
    }

    /// Emits whatever is pending: the complete lines as they are, the tail marked partial.
    pub fn flush(&mut self, out: &mut Vec<Lines>) {
        if self.buf.is_empty() {
            self.deadline = None;
            return;
        }
        match self.buf.iter().rposition(|&b| b == b'\n') {
            Some(nl) => {
                let tail = self.buf.split_off(nl + 1);
                let start = self.start;
                self.take(false, out);
                self.buf = tail;
                self.start = start;
                self.take(true, out);
            }
            None => self.take(true, out),
        }
    }

    fn take(&mut self, partial: bool, out: &mut Vec<Lines>) {
        self.deadline = None;
        let Some((received, ifindex, _)) = self.start.take() else {
            self.buf.clear();
            return;
        };
        if self.buf.is_empty() {
            return;
        }
        let mut bytes = std::mem::take(&mut self.buf);
        if bytes.last() == Some(&b'\n') {
            bytes.pop();
        }
        out.push(Lines {
            received,
            ifindex,
            bytes,
            partial,
        });
    }
}

/// The parts of a plain record.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PlainText {
    /// Timestamp of the first line that has a prefix, microseconds since boot.
    pub timestamp_us: Option<u64>,
    /// Caller of the first line that shows one (`CONFIG_PRINTK_CALLER`).
    pub caller: Option<Caller>,
    /// The lines, prefixes removed, joined by `\n`.
    pub text: Vec<u8>,
}

/// Splits `bytes` into lines and removes each line's prefix.
#[must_use]
pub fn parse_lines(bytes: &[u8]) -> PlainText {
    let mut out = PlainText {
        text: Vec::with_capacity(bytes.len()),
        ..PlainText::default()
    };
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        if i > 0 {
            out.text.push(b'\n');
        }
        match parse_prefix(line) {
            Some(prefix) => {
                if out.timestamp_us.is_none() {
                    out.timestamp_us = Some(prefix.timestamp_us);
                }
                if out.caller.is_none() {
                    out.caller = prefix.caller;
                }
                out.text
                    .extend_from_slice(line.get(prefix.len..).unwrap_or_default());
            }
            None => out.text.extend_from_slice(line),
        }
    }
    out
}

/// A parsed line prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prefix {
    /// The timestamp, microseconds.
    pub timestamp_us: u64,
    /// The caller, if shown.
    pub caller: Option<Caller>,
    /// Bytes the prefix takes, including the space after it.
    pub len: usize,
}

/// Parses `[%5lu.%06lu]`, then `[%6s]` with `CONFIG_PRINTK_CALLER`, then a space
/// (`kernel/printk/printk.c`, `print_time`, `print_caller`, `info_print_prefix`).
#[must_use]
pub fn parse_prefix(line: &[u8]) -> Option<Prefix> {
    let inner_len = line.iter().position(|&b| b == b']')?;
    let inner = line
        .get(1..inner_len)
        .filter(|_| line.first() == Some(&b'['))?;
    let inner = trim_start_spaces(inner);
    let dot = inner.iter().position(|&b| b == b'.')?;
    let (secs, frac) = inner.split_at(dot);
    let frac = frac.get(1..)?;
    if frac.len() != 6 {
        return None;
    }
    let timestamp_us = digits(secs)?
        .checked_mul(1_000_000)?
        .checked_add(digits(frac)?)?;
    let mut len = inner_len + 1;
    let mut caller = None;
    let rest = line.get(len..).unwrap_or_default();
    if rest.first() == Some(&b'[')
        && let Some(end) = rest.iter().position(|&b| b == b']')
    {
        let value = trim_start_spaces(rest.get(1..end).unwrap_or_default());
        if matches!(value.first(), Some(b'T' | b'C')) {
            caller = Some(Caller::parse(value));
            len += end + 1;
        }
    }
    if line.get(len) == Some(&b' ') {
        len += 1;
    }
    Some(Prefix {
        timestamp_us,
        caller,
        len,
    })
}

fn trim_start_spaces(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|&&b| b == b' ').count();
    s.get(n..).unwrap_or_default()
}

fn digits(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    s.iter().try_fold(0u64, |acc, &b| {
        if b.is_ascii_digit() {
            acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push_all(a: &mut LineAssembler, now: Instant, payloads: &[&[u8]]) -> Vec<Lines> {
        let mut out = Vec::new();
        for p in payloads {
            a.push(
                now,
                DateTime::UNIX_EPOCH,
                3,
                p,
                Duration::from_millis(500),
                4096,
                &mut out,
            );
        }
        out
    }

    #[test]
    fn prefix_of_a_real_line() {
        let p = parse_prefix(b"[    4.578958] NCT-5d3ac7 SHORT hello").unwrap();
        assert_eq!((p.timestamp_us, p.caller, p.len), (4_578_958, None, 15));
    }

    #[test]
    fn prefix_with_caller() {
        let line = b"[   12.000001][    T1] x";
        let p = parse_prefix(line).unwrap();
        assert_eq!(p.timestamp_us, 12_000_001);
        assert_eq!(p.caller, Some(Caller::Task(1)));
        assert_eq!(&line[p.len..], b"x");
        let p = parse_prefix(b"[12345.000000][     C3] y").unwrap();
        assert_eq!(p.caller, Some(Caller::Cpu(3)));
    }

    #[test]
    fn not_a_prefix() {
        for line in [
            &b"no prefix"[..],
            b"[ 4.57] short fraction",
            b"[abc.123456] x",
            b"[    4.578958 unclosed",
            b"[99999999999999999999.000000] overflow",
            b"x[    4.578958] later",
            b"",
            b"[",
            b"]",
        ] {
            assert_eq!(
                parse_prefix(line),
                None,
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn multi_line_record_loses_every_prefix() {
        // tests/data/plain.pcap, frame 376.
        let t = parse_lines(b"[    4.599528] NCT-5d3ac7 MULTI line-1/3\n[    4.599528] NCT-5d3ac7 MULTI line-2/3\n[    4.599528] NCT-5d3ac7 MULTI line-3/3");
        assert_eq!(t.timestamp_us, Some(4_599_528));
        assert_eq!(
            t.text,
            b"NCT-5d3ac7 MULTI line-1/3\nNCT-5d3ac7 MULTI line-2/3\nNCT-5d3ac7 MULTI line-3/3"
        );
    }

    #[test]
    fn lines_without_prefix_are_kept_whole() {
        let t = parse_lines(b"no time\n[    1.000000] timed");
        assert_eq!(t.timestamp_us, Some(1_000_000));
        assert_eq!(t.text, b"no time\ntimed");
    }

    #[test]
    fn a_payload_ending_in_newline_is_a_record() {
        let mut a = LineAssembler::default();
        let out = push_all(&mut a, Instant::now(), &[b"[    0.1] a\n", b"b\nc\n"]);
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].bytes, b"b\nc");
        assert!(!out[1].partial);
        assert_eq!(a.pending(), 0);
        assert_eq!(a.deadline(), None);
    }

    #[test]
    fn a_record_cut_at_1000_bytes_continues_in_the_next_payload() {
        // tests/data/plain.pcap, frames 586 and 587: 1000 bytes ending `LONG-EN`, then `D\n`.
        let mut first = b"[    6.626239] NCT-5d3ac7 LONG-BEGIN ".to_vec();
        first.resize(993, b'x');
        first.extend_from_slice(b"LONG-EN");
        assert_eq!(first.len(), 1000);
        let mut a = LineAssembler::default();
        let now = Instant::now();
        assert!(push_all(&mut a, now, &[&first]).is_empty());
        assert_eq!(a.deadline(), Some(now + Duration::from_millis(500)));
        let out = push_all(&mut a, now, &[b"D\n"]);
        assert_eq!(out.len(), 1);
        assert!(out[0].bytes.ends_with(b"LONG-END"));
        assert_eq!(out[0].bytes.len(), 1001);
    }

    #[test]
    fn idle_timeout_flushes_a_partial_line() {
        let mut a = LineAssembler::default();
        let now = Instant::now();
        push_all(&mut a, now, &[b"done\nhalf"]);
        let mut out = Vec::new();
        a.poll(now + Duration::from_millis(499), &mut out);
        assert!(out.is_empty());
        a.poll(now + Duration::from_millis(500), &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(
            (out[0].bytes.as_slice(), out[0].partial),
            (&b"done"[..], false)
        );
        assert_eq!(
            (out[1].bytes.as_slice(), out[1].partial),
            (&b"half"[..], true)
        );
        assert_eq!(a.deadline(), None);
    }

    #[test]
    fn size_bound_flushes_a_partial_line() {
        let mut a = LineAssembler::default();
        let big = vec![b'x'; 3000];
        let out = push_all(&mut a, Instant::now(), &[&big, &big]);
        assert_eq!(out.len(), 1);
        assert!(out[0].partial);
        assert_eq!(out[0].bytes.len(), 3000);
        assert_eq!(a.pending(), 3000);
    }

    #[test]
    fn flush_on_exit() {
        let mut a = LineAssembler::default();
        push_all(&mut a, Instant::now(), &[b"tail"]);
        let mut out = Vec::new();
        a.flush(&mut out);
        assert_eq!(out.len(), 1);
        assert!(out[0].partial);
        a.flush(&mut out);
        assert_eq!(out.len(), 1);
    }
}
