//! `--format raw`: one line per datagram, undecoded, for debugging the capture path.
//!
//! `2026-11-27T21:53:56.123456Z eth1 10.77.0.10:6665 > 10.77.0.1:6666 <payload, escaped>`

use std::fmt::Write as _;

use chrono::{DateTime, SecondsFormat, Utc};

use super::escape::escape_into;
use crate::wire::Datagram;

/// Appends the line for `datagram`, captured at `ts` on `interface`, ending in `\n`.
pub fn write_datagram(
    ts: DateTime<Utc>,
    interface: &str,
    datagram: &Datagram<'_>,
    out: &mut String,
) {
    let _ = write!(
        out,
        "{} {} {} > {} ",
        ts.to_rfc3339_opts(SecondsFormat::Micros, true),
        interface,
        datagram.src,
        datagram.dst
    );
    escape_into(datagram.payload, out);
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

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
