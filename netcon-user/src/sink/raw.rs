//! `--format raw`: one line per datagram, undecoded, for debugging the capture path.
//!
//! `2026-11-27T21:53:56.123456Z eth1 10.77.0.10:6665 > 10.77.0.1:6666 <payload, escaped>`

use std::fmt::Write as _;

use chrono::{DateTime, Datelike as _, SecondsFormat, Utc};

use super::escape::escape_into;
use crate::wire::Datagram;

/// Appends the line for `datagram`, captured at `ts` on `interface`, ending in `\n`.
pub fn write_datagram(
    ts: DateTime<Utc>,
    interface: &str,
    datagram: &Datagram<'_>,
    out: &mut String,
) {
    // The text format's writer caches the second; years of more than four digits, which
    // RFC 3339 cannot hold, are left to chrono's own spelling.
    if (0..=9999).contains(&ts.year()) {
        super::text::write_time(ts, out);
    } else {
        out.push_str(&ts.to_rfc3339_opts(SecondsFormat::Micros, true));
    }
    out.push(' ');
    out.push_str(interface);
    let _ = write!(out, " {} > {} ", datagram.src, datagram.dst);
    escape_into(datagram.payload, out);
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// The cached time is what chrono's RFC 3339 gives, leap seconds included.
        #[test]
        fn time_agrees_with_rfc3339(
            secs in -62_135_596_800i64..253_402_300_800,
            nanos in 0u32..2_000_000_000,
        ) {
            let nanos = if secs.rem_euclid(60) == 59 { nanos } else { nanos % 1_000_000_000 };
            let Some(ts) = DateTime::from_timestamp(secs, nanos) else { return Ok(()) };
            let d = Datagram {
                src: "10.0.0.1:6665".parse().unwrap(),
                dst: "10.0.0.2:6666".parse().unwrap(),
                payload: b"x",
            };
            let mut line = String::new();
            write_datagram(ts, "eth1", &d, &mut line);
            let expected = format!(
                "{} eth1 10.0.0.1:6665 > 10.0.0.2:6666 x\n",
                ts.to_rfc3339_opts(SecondsFormat::Micros, true)
            );
            proptest::prop_assert_eq!(line, expected);
        }
    }

    #[test]
    fn formats_ipv6_and_escapes_payload() {
        let d = Datagram {
            src: "[fd00:1::10]:6665".parse().unwrap(),
            dst: "[fd00:1::1]:6666".parse().unwrap(),
            payload: b"hi\x1b[2J\n",
        };
        let ts = DateTime::from_timestamp(1_764_280_436, 123_456_789).unwrap();
        let mut line = String::new();
        write_datagram(ts, "eth1", &d, &mut line);
        assert_eq!(
            line,
            "2025-11-27T21:53:56.123456Z eth1 [fd00:1::10]:6665 > [fd00:1::1]:6666 hi\\u{1b}[2J\\n\n"
        );
    }
}
