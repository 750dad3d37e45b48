//! The records a guest writes to `/dev/kmsg`: the scheme of the captures in `netcon-user/tests/data`
//! (`NCT-<runid> SHORT`, `UTF8`, `MULTI`, `LEVEL0..7`, `FACILITY`, `BURST001..200`, `LONG`,
//! `LONGX`, `END`).

use std::fmt::Write as _;

use serde_json::{Value, json};

/// How many `BURST` records follow each other as fast as the guest can write them.
pub const BURST: usize = 200;

/// Longest text written: `/dev/kmsg` refuses writes longer than 992 bytes on 6.1 (1024 on
/// 6.12), `<6>` and the `\n` included (`kernel/printk/printk.c`, `devkmsg_write`, `LOG_LINE_MAX`).
const LONG_TEXT: usize = 986;

/// What a record is there to exercise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A record of its own (levels, facilities, UTF-8, several lines).
    Marker,
    /// One of the [`BURST`] records written back to back.
    Burst,
    /// Longer than one datagram once sent: fragmented (`ncfrag`) in extended mode, cut at 1000
    /// bytes in plain mode.
    Long,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Marker => "marker",
            Self::Burst => "burst",
            Self::Long => "long",
        }
    }
}

/// One record the guest writes.
#[derive(Debug, Clone)]
pub struct Record {
    /// Short name (`LEVEL3`, `BURST017`); also the initramfs file order.
    pub name: String,
    /// The `<N>` it is written with: `facility * 8 + level`.
    pub prio: u8,
    pub kind: Kind,
    /// The exact text, without the trailing `\n`.
    pub text: Vec<u8>,
}

impl Record {
    /// Syslog level as the kernel stores it.
    pub fn level(&self) -> u8 {
        self.prio & 7
    }

    /// Syslog facility as the kernel stores it: `/dev/kmsg` turns facility 0 (kernel) into 1
    /// (user) (`kernel/printk/printk.c`, `devkmsg_write`).
    pub fn facility(&self) -> u8 {
        match self.prio >> 3 {
            0 => 1,
            f => f,
        }
    }

    /// The bytes written to `/dev/kmsg` in one `write(2)`.
    pub fn kmsg_bytes(&self) -> Vec<u8> {
        let mut out = format!("<{}>", self.prio).into_bytes();
        out.extend_from_slice(&self.text);
        out.push(b'\n');
        out
    }
}

/// The records of one boot, every text starting `NCT-<runid> `.
pub fn records(runid: &str) -> Vec<Record> {
    let tag = format!("NCT-{runid}");
    let mut out = Vec::new();
    let mut push = |name: &str, prio: u8, kind: Kind, text: Vec<u8>| {
        out.push(Record {
            name: name.to_owned(),
            prio,
            kind,
            text,
        });
    };
    push(
        "SHORT",
        6,
        Kind::Marker,
        format!("{tag} SHORT hello-from-real-kernel").into_bytes(),
    );
    let mut utf8 = format!("{tag} UTF8 héllo wörld ✓ 日本語 tab[\t] raw-ff[").into_bytes();
    utf8.extend_from_slice(b"\xff]");
    push("UTF8", 6, Kind::Marker, utf8);
    let multi = (1..=3)
        .map(|i| format!("{tag} MULTI line-{i}/3"))
        .collect::<Vec<_>>()
        .join("\n");
    push("MULTI", 6, Kind::Marker, multi.into_bytes());
    for level in 0..8u8 {
        push(
            &format!("LEVEL{level}"),
            level,
            Kind::Marker,
            format!("{tag} LEVEL{level} message written with <{level}>").into_bytes(),
        );
    }
    push(
        "FACILITY",
        3 * 8 + 6,
        Kind::Marker,
        format!("{tag} FACILITY daemon.info written with <30>").into_bytes(),
    );
    for i in 1..=BURST {
        push(
            &format!("BURST{i:03}"),
            6,
            Kind::Burst,
            format!("{tag} BURST {i:03}/{BURST:03}").into_bytes(),
        );
    }
    push("LONG", 6, Kind::Long, long_ascii(&tag));
    push("LONGX", 6, Kind::Long, long_utf8(&tag));
    push(
        "END",
        6,
        Kind::Marker,
        format!("{tag} END of test records").into_bytes(),
    );
    out
}

/// [`LONG_TEXT`] bytes of ASCII, `[0000]000[0001]111...`: its header makes it one datagram too
/// long in both formats.
fn long_ascii(tag: &str) -> Vec<u8> {
    const SYMBOLS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let end = " LONG-END";
    let mut text = format!("{tag} LONG-BEGIN ");
    let mut i = 0;
    while text.len() + end.len() < LONG_TEXT {
        let c = char::from(SYMBOLS[i % SYMBOLS.len()]);
        let _ = write!(text, "[{i:04}]{c}{c}{c}");
        i += 1;
    }
    text.truncate(LONG_TEXT - end.len());
    text.push_str(end);
    text.into_bytes()
}

/// Multi-byte UTF-8 that the extended format escapes to 4 bytes a byte (`\xc3`): 510 bytes of
/// text, 1941 escaped, three fragments, boundaries inside escapes. Not longer: from 6.2 on,
/// printk formats a record for the consoles into 2048 bytes, header included
/// (`PRINTK_MESSAGE_MAX`, `kernel/printk/internal.h`), and cuts the rest (seen on 6.12: a
/// 978-byte text arrived as `ncfrag=.../2031`, cut inside an escape).
fn long_utf8(tag: &str) -> Vec<u8> {
    const REPEATS: usize = 53;
    let end = " LONGX-END";
    let mut text = format!("{tag} LONGX-BEGIN ");
    for _ in 0..REPEATS {
        text.push_str("äöü✓");
    }
    text.push_str(end);
    text.into_bytes()
}

/// The records as `netcon-user/tests/data/*.expected.json` lists them, plus what the guest reported.
pub fn expected_json(runid: &str, records: &[Record], meta: &Value) -> Value {
    let list: Vec<Value> = records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            json!({
                "name": r.name,
                "prio": r.prio,
                "kind": r.kind.as_str(),
                "file": file_name(i),
                "text_hex": hex(&r.text),
            })
        })
        .collect();
    json!({ "runid": runid, "records": list, "meta": meta })
}

/// The initramfs file a record is written from (`/records/0001`).
pub fn file_name(index: usize) -> String {
    format!("{:04}", index + 1)
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_in_one_kmsg_write_on_every_kernel() {
        for r in records("abcdef") {
            assert!(r.kmsg_bytes().len() <= 992, "{} too long", r.name);
        }
    }

    #[test]
    fn long_records_are_long() {
        let rs = records("abcdef");
        let long = rs.iter().find(|r| r.name == "LONG").unwrap();
        assert_eq!(long.text.len(), LONG_TEXT);
        assert!(long.text.ends_with(b" LONG-END"));
        let longx = rs.iter().find(|r| r.name == "LONGX").unwrap();
        assert!(std::str::from_utf8(&longx.text).is_ok());
        let escaped = longx
            .text
            .iter()
            .map(|&b| if b.is_ascii() { 1 } else { 4 })
            .sum::<usize>();
        // Three fragments, and within 6.2+'s 2048 bytes with a header of up to ~40 bytes.
        assert!(escaped > 1900 && escaped + 40 < 2048, "{escaped}");
    }

    #[test]
    fn names_and_facilities() {
        let rs = records("abcdef");
        assert_eq!(rs.len(), 3 + 8 + 1 + BURST + 3);
        let level0 = rs.iter().find(|r| r.name == "LEVEL0").unwrap();
        assert_eq!((level0.facility(), level0.level()), (1, 0));
        let facility = rs.iter().find(|r| r.name == "FACILITY").unwrap();
        assert_eq!((facility.facility(), facility.level()), (3, 6));
    }
}
