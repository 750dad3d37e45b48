//! What `netcon-sniff --format raw` prints on stdout, read back independently of its code: the
//! line shape, the payload escaping and the timestamp.

use std::net::SocketAddr;

use chrono::{DateTime, NaiveDateTime, Utc};

/// One parsed `--format raw` line:
/// `<RFC3339 UTC µs> <IFACE> <SRC>:<SPORT> > <DST>:<DPORT> <escaped payload>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawLine {
    /// The timestamp as printed.
    pub ts: String,
    /// Interface name (for `-r`, whatever the binary names the file's interface).
    pub iface: String,
    /// Source address and port.
    pub src: SocketAddr,
    /// Destination address and port.
    pub dst: SocketAddr,
    /// The payload, escaped as printed.
    pub payload: String,
}

impl RawLine {
    /// Parses and checks one line of a live capture, including that the timestamp is RFC 3339
    /// UTC with exactly six fractional digits and within a day of now.
    ///
    /// # Panics
    /// If the line does not have that shape.
    #[must_use]
    pub fn parse(line: &str) -> RawLine {
        let parsed = RawLine::parse_any_time(line);
        let ts = parse_rfc3339_micros(&parsed.ts).expect("checked by parse_any_time");
        assert!(
            (ts - Utc::now()).num_seconds().abs() < 86_400,
            "timestamp {:?} is not within a day of now (a clock or epoch mix-up?) in {line:?}",
            parsed.ts
        );
        parsed
    }

    /// As [`RawLine::parse`] but for lines read from a capture file (`-r`): the timestamp must
    /// have the same shape but may be any time (the file's).
    ///
    /// # Panics
    /// If the line does not have that shape.
    #[must_use]
    pub fn parse_any_time(line: &str) -> RawLine {
        RawLine::try_parse(line).unwrap_or_else(|e| panic!("{e}"))
    }

    /// As [`RawLine::parse_any_time`], with the reason as an error rather than a panic.
    ///
    /// # Errors
    /// If the line does not have the shape of a raw line.
    pub fn try_parse(line: &str) -> Result<RawLine, String> {
        let mut it = line.splitn(6, ' ');
        let mut next = |what: &str| {
            it.next()
                .ok_or_else(|| format!("no {what} in output line {line:?}"))
        };
        let ts = next("timestamp")?.to_owned();
        let iface = next("interface")?.to_owned();
        let src = next("source")?.to_owned();
        let arrow = next("`>`")?;
        let dst = next("destination")?.to_owned();
        let payload = next("payload")?.to_owned();
        if arrow != ">" {
            return Err(format!("no ` > ` between addresses in {line:?}"));
        }
        if iface.is_empty() {
            return Err(format!("empty interface column in {line:?}"));
        }
        let parse_addr = |s: &str| -> Result<SocketAddr, String> {
            s.parse()
                .map_err(|e| format!("bad address {s:?} ({e}) in {line:?}"))
        };
        if parse_rfc3339_micros(&ts).is_none() {
            return Err(format!(
                "timestamp {ts:?} is not RFC 3339 UTC with microseconds (YYYY-MM-DDTHH:MM:SS.ffffffZ) in {line:?}"
            ));
        }
        Ok(RawLine {
            ts,
            iface,
            src: parse_addr(&src)?,
            dst: parse_addr(&dst)?,
            payload,
        })
    }

    /// The payload's bytes: the printed column with the escapes undone (see [`unescape`]).
    ///
    /// # Panics
    /// On an escape outside that set.
    #[must_use]
    pub fn payload_bytes(&self) -> Vec<u8> {
        unescape(&self.payload).unwrap_or_else(|e| panic!("payload {:?}: {e}", self.payload))
    }
}

/// Undoes netcon-sniff's payload escaping (`netcon-user/src/escape.rs`), written independently
/// of it: `\\`, `\n`, `\r`, `\t`, `\u{HEX}` (control characters), `\xHH` (bytes that are not
/// UTF-8); anything else is printed as itself.
///
/// # Errors
/// On an escape outside that set, or a cut one.
pub fn unescape(s: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(s.len());
    let mut chars = s.char_indices();
    while let Some((at, c)) = chars.next() {
        if c != '\\' {
            let mut buf = [0; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            continue;
        }
        match chars.next().map(|(_, e)| e) {
            Some('\\') => out.push(b'\\'),
            Some('n') => out.push(b'\n'),
            Some('r') => out.push(b'\r'),
            Some('t') => out.push(b'\t'),
            Some('x') => {
                let hex: String = chars.by_ref().take(2).map(|(_, h)| h).collect();
                if hex.len() != 2 || !hex.chars().all(|h| h.is_ascii_hexdigit()) {
                    return Err(format!("bad \\x escape at byte {at}"));
                }
                let byte = u8::from_str_radix(&hex, 16)
                    .map_err(|e| format!("bad \\x escape at byte {at}: {e}"))?;
                out.push(byte);
            }
            Some('u') => {
                if chars.next().map(|(_, b)| b) != Some('{') {
                    return Err(format!("no `{{` after \\u at byte {at}"));
                }
                let mut hex = String::new();
                let mut closed = false;
                for (_, h) in chars.by_ref() {
                    if h == '}' {
                        closed = true;
                        break;
                    }
                    hex.push(h);
                }
                let c = Some(&hex)
                    .filter(|h| closed && (1..=6).contains(&h.len()))
                    .filter(|h| h.chars().all(|d| d.is_ascii_hexdigit()))
                    .and_then(|h| u32::from_str_radix(h, 16).ok())
                    .and_then(char::from_u32)
                    .ok_or_else(|| format!("bad \\u{{{hex}}} escape at byte {at}"))?;
                let mut buf = [0; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
            Some(other) => return Err(format!("unknown escape \\{other} at byte {at}")),
            None => return Err("lone `\\` at the end".to_owned()),
        }
    }
    Ok(out)
}

/// A stdout line must be valid UTF-8 and hold no control character: the payload is escaped.
pub(super) fn check_stdout_line(raw: &[u8]) -> Result<String, String> {
    let line = std::str::from_utf8(raw)
        .map_err(|e| format!("not valid UTF-8 ({e}): {}", raw.escape_ascii()))?;
    if let Some(c) = line.chars().find(|c| c.is_control()) {
        return Err(format!("raw control character {c:?} in {line:?}"));
    }
    Ok(line.to_owned())
}

/// The printed timestamp shape: `d` a digit, anything else itself. chrono alone would also take
/// other widths, offsets and separators.
const TIMESTAMP_SHAPE: &str = "dddd-dd-ddTdd:dd:dd.ddddddZ";

/// The time of `YYYY-MM-DDTHH:MM:SS.ffffffZ`, or `None` if not exactly that.
fn parse_rfc3339_micros(ts: &str) -> Option<DateTime<Utc>> {
    let shaped = ts.len() == TIMESTAMP_SHAPE.len()
        && ts
            .bytes()
            .zip(TIMESTAMP_SHAPE.bytes())
            .all(|(got, want)| got == want || (want == b'd' && got.is_ascii_digit()));
    if !shaped {
        return None;
    }
    NaiveDateTime::parse_from_str(ts, "%Y-%m-%dT%H:%M:%S%.6fZ")
        .ok()
        .map(|t| t.and_utc())
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` for a time since the Unix epoch, truncated to microseconds
/// (as `--format raw` prints it).
///
/// # Panics
/// If the time is out of chrono's range or `nanos` is a second or more.
#[must_use]
pub fn rfc3339_micros(secs: i64, nanos: u32) -> String {
    DateTime::<Utc>::from_timestamp(secs, nanos)
        .unwrap_or_else(|| panic!("{secs}.{nanos:09} s is no time"))
        .format("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_raw_line_v4_and_v6() {
        let ts = Utc::now().format("%Y-%m-%dT12:00:00.123456Z").to_string();
        let l = RawLine::parse(&format!(
            "{ts} veth-c1 10.1.0.10:6665 > 10.1.0.1:6666 hello world\\n"
        ));
        assert_eq!(l.iface, "veth-c1");
        assert_eq!(l.src, "10.1.0.10:6665".parse().unwrap());
        assert_eq!(l.dst, "10.1.0.1:6666".parse().unwrap());
        assert_eq!(l.payload, "hello world\\n");
        assert_eq!(l.payload_bytes(), b"hello world\n");
        let l = RawLine::parse(&format!(
            "{ts} veth-c1 [fd00:1::10]:6665 > [fd00:1::1]:6666 x"
        ));
        assert_eq!(l.dst, "[fd00:1::1]:6666".parse().unwrap());
    }

    #[test]
    #[should_panic(expected = "not within a day of now")]
    fn live_line_must_be_recent() {
        let _ = RawLine::parse("2001-02-03T04:05:06.000007Z 0 10.77.0.10:6665 > 10.77.0.1:6666 x");
    }

    #[test]
    fn file_line_may_be_old() {
        let l = RawLine::parse_any_time(
            "2001-02-03T04:05:06.000007Z 0 10.77.0.10:6665 > 10.77.0.1:6666 a b  c",
        );
        assert_eq!(l.iface, "0");
        assert_eq!(l.payload, "a b  c");
        assert!(
            RawLine::try_parse("2001-02-03T04:05:06.000007Z 0 10.77.0.10:6665 10.77.0.1:6666 x")
                .is_err()
        );
    }

    #[test]
    fn unescapes_every_escape() {
        assert_eq!(
            unescape(r"a\\b\n\r\t\u{1b}[\u{0}\u{9b}\xff\xc3 hé ✓").unwrap(),
            b"a\\b\n\r\t\x1b[\x00\xc2\x9b\xff\xc3 h\xc3\xa9 \xe2\x9c\x93"
        );
        assert!(unescape(r"\q").is_err());
        assert!(unescape(r"\x4").is_err());
        assert!(unescape(r"\u{110000}").is_err());
        assert!(unescape(r"\u1b").is_err());
        assert!(unescape(r"\u{1b").is_err());
        assert!(unescape(r"\x+f").is_err());
        assert!(unescape("end\\").is_err());
    }

    #[test]
    fn formats_rfc3339_micros() {
        assert_eq!(rfc3339_micros(0, 999), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            rfc3339_micros(1_795_822_008, 519_824_999),
            "2026-11-27T23:26:48.519824Z"
        );
        assert_eq!(
            parse_rfc3339_micros(&rfc3339_micros(1_795_822_008, 0)).map(|t| t.timestamp()),
            Some(1_795_822_008)
        );
    }

    #[test]
    fn rejects_bad_timestamps() {
        assert_eq!(
            parse_rfc3339_micros("1970-01-02T00:00:01.000000Z").map(|t| t.timestamp()),
            Some(86_401)
        );
        for bad in [
            "2026-11-27T21:53:56.123Z",
            "2026-11-27T21:53:56.123456+00:00",
            "2026-11-27 21:53:56.123456Z",
            "2026-13-27T21:53:56.123456Z",
            "2026-02-30T21:53:56.123456Z",
        ] {
            assert_eq!(parse_rfc3339_micros(bad), None, "{bad}");
        }
    }

    #[test]
    fn stdout_lines_must_be_escaped() {
        assert!(check_stdout_line(b"a \\u{1b} \\xff").is_ok());
        assert!(check_stdout_line(b"a \x1b b").is_err());
        assert!(check_stdout_line(b"a \xff b").is_err());
        assert!(check_stdout_line("a \u{9b} b".as_bytes()).is_err());
    }
}
