//! The extended format: header, escapes, and the `KEY=value` lines after the text.
//!
//! ```text
//! [<release>,]<pri>,<seq>,<ts_usec>,<flag>[,<field>]...;<escaped text>\n[ <KEY>=<value>\n]...
//! ```
//!
//! The header is `kernel/printk/printk.c` (`info_print_ext_header`), the optional release prefix
//! and the `ncfrag=<off>/<total>` field `drivers/net/netconsole.c` (`send_ext_msg_udp`, later
//! `send_msg_fragmented`), the escaping `kernel/printk/printk.c` (`msg_add_ext_text`: every byte
//! below `' '`, at or above 127, and `\` itself becomes `\xNN`).
//!
//! Parsing is in two steps, because the text may be cut into `ncfrag` fragments anywhere, even
//! inside a `\xNN` escape: [`parse`] splits one payload into its header and its raw body (a
//! fragment's chunk, or the whole body); [`parse_body`] splits a whole (reassembled) body into text
//! and fields and unescapes them.
//!
//! Nothing here indexes a slice without a bound established first; no input makes it panic.

use thiserror::Error;

use super::record::{ContFlag, Field, Priority};

/// Longest release token accepted before the header (`__NEW_UTS_LEN` is 64 in
/// `include/uapi/linux/utsname.h`).
const MAX_RELEASE_LEN: usize = 64;

/// Why a payload that starts like an extended header does not parse.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ExtendedError {
    /// The first line has no `;` closing the header.
    #[error("no `;` closes the header")]
    MissingSemicolon,
    /// Fewer than the four mandatory fields.
    #[error("header has {found} fields, needs pri, seq, ts_usec and flag")]
    TooFewFields {
        /// Fields found (not counting the release).
        found: usize,
    },
    /// A numeric field is empty.
    #[error("{field} is empty")]
    EmptyNumber {
        /// Which field.
        field: &'static str,
    },
    /// A numeric field has a byte that is not a decimal digit.
    #[error("{field} is not a decimal number")]
    NotANumber {
        /// Which field.
        field: &'static str,
    },
    /// A numeric field does not fit its type.
    #[error("{field} overflows")]
    NumberOverflow {
        /// Which field.
        field: &'static str,
    },
    /// `<pri>` above what a `u8` facility allows.
    #[error("priority {value} is above {max}")]
    PriorityOutOfRange {
        /// The value sent.
        value: u64,
        /// The largest valid value.
        max: u16,
    },
    /// The flag field is not one byte.
    #[error("flag field is {len} bytes, expected 1")]
    BadFlag {
        /// Its length.
        len: usize,
    },
    /// `ncfrag=` is not `<offset>/<total>`.
    #[error("ncfrag value is not <offset>/<total>")]
    BadNcfrag,
}

/// `ncfrag=<off>/<total>`: where this chunk goes in the record's escaped body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FragmentHeader {
    /// Byte offset of the chunk.
    pub offset: usize,
    /// Length of the whole body (escaped text, dictionary, userdata, sysdata).
    pub total: usize,
}

/// A parsed extended header, borrowing the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header<'a> {
    /// Release prefix (`r` targets, kernel 6.6 and later).
    pub release: Option<&'a str>,
    /// Facility and level.
    pub priority: Priority,
    /// printk sequence number.
    pub seq: u64,
    /// Microseconds since the sender booted.
    pub ts_usec: u64,
    /// The continuation flag.
    pub cont: ContFlag,
    /// Value of `caller=`, if present.
    pub caller: Option<&'a [u8]>,
    /// `ncfrag=`, if present.
    pub fragment: Option<FragmentHeader>,
    /// The optional fields after the flag, as sent (comma-separated, without the leading comma);
    /// [`Header::extra_fields`] yields the unknown ones.
    pub optional: &'a [u8],
}

impl<'a> Header<'a> {
    /// The optional fields this decoder does not know (neither `caller=` nor `ncfrag=`).
    pub fn extra_fields(&self) -> impl Iterator<Item = &'a [u8]> + use<'a> {
        self.optional
            .split(|&b| b == b',')
            .filter(|f| !f.is_empty() && !f.starts_with(b"caller=") && !f.starts_with(b"ncfrag="))
    }
}

/// One extended payload: its header and its body (a fragment's chunk, or the whole body).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Payload<'a> {
    /// The header.
    pub header: Header<'a>,
    /// Everything after the header's `;`, still escaped.
    pub body: &'a [u8],
}

/// Whether `payload` starts like an extended header: an optional release token (starting with a
/// digit, printable ASCII without `;`, at most 64 bytes) and `,`, then decimal `<pri>`, `,` and a
/// digit (`Documentation/networking/netconsole.rst`, "Extended console"; the release token is
/// its "release prepend"). Everything else is plain text.
///
/// Deliberately loose after that point: a payload that starts like this but does not parse is
/// reported as malformed rather than shown as plain text, so header damage is visible.
#[must_use]
pub fn looks_extended(payload: &[u8]) -> bool {
    let Some((first, rest)) = split_once(payload, b',') else {
        return false;
    };
    let after_pri = if is_digits(first) {
        rest
    } else if is_release(first) {
        match split_once(rest, b',') {
            Some((pri, after)) if is_digits(pri) => after,
            _ => return false,
        }
    } else {
        return false;
    };
    after_pri.first().is_some_and(u8::is_ascii_digit)
}

/// Parses one extended payload.
///
/// # Errors
/// [`ExtendedError`] for a header that does not parse. Unknown optional fields and unknown flag
/// bytes are kept, not rejected.
pub fn parse(payload: &[u8]) -> Result<Payload<'_>, ExtendedError> {
    // The header ends at the first `;` of the first line; the body may be long, so stop there.
    let semi = memchr::memchr2(b';', b'\n', payload)
        .filter(|&i| payload.get(i) == Some(&b';'))
        .ok_or(ExtendedError::MissingSemicolon)?;
    let (header, body) = payload.split_at(semi);
    let body = body.get(1..).unwrap_or_default();

    let is_comma = |b: &u8| *b == b',';
    let mut fields = header.splitn(5, is_comma);
    let mut next = fields.next();
    let release = match next {
        Some(tok) if !is_digits(tok) && is_release(tok) => {
            // Keep only the four mandatory fields plus the rest in one piece.
            let rest = header.get(tok.len() + 1..).unwrap_or_default();
            fields = rest.splitn(5, is_comma);
            next = fields.next();
            std::str::from_utf8(tok).ok()
        }
        _ => None,
    };
    let pri_field = next.ok_or(ExtendedError::TooFewFields { found: 0 })?;
    let seq_field = fields
        .next()
        .ok_or(ExtendedError::TooFewFields { found: 1 })?;
    let ts_field = fields
        .next()
        .ok_or(ExtendedError::TooFewFields { found: 2 })?;
    let flag_field = fields
        .next()
        .ok_or(ExtendedError::TooFewFields { found: 3 })?;
    let optional = fields.next().unwrap_or_default();

    let pri = parse_u64(pri_field, "pri")?;
    let priority = u16::try_from(pri).ok().and_then(Priority::from_pri).ok_or(
        ExtendedError::PriorityOutOfRange {
            value: pri,
            max: Priority::MAX_PRI,
        },
    )?;
    let seq = parse_u64(seq_field, "seq")?;
    let ts_usec = parse_u64(ts_field, "ts_usec")?;
    let cont = match flag_field {
        [b] => ContFlag::from_byte(*b),
        other => return Err(ExtendedError::BadFlag { len: other.len() }),
    };

    let mut caller = None;
    let mut fragment = None;
    for field in optional.split(|&b| b == b',') {
        if let Some(value) = field.strip_prefix(b"caller=") {
            caller = Some(value);
        } else if let Some(value) = field.strip_prefix(b"ncfrag=") {
            let (off, total) = split_once(value, b'/').ok_or(ExtendedError::BadNcfrag)?;
            fragment = Some(FragmentHeader {
                offset: parse_usize(off, "ncfrag offset")?,
                total: parse_usize(total, "ncfrag total")?,
            });
        }
    }

    Ok(Payload {
        header: Header {
            release,
            priority,
            seq,
            ts_usec,
            cont,
            caller,
            fragment,
            optional,
        },
        body,
    })
}

/// Splits a whole (reassembled) body into the text and the `KEY=value` lines, unescaping both.
///
/// The text ends at the first `\n` (a `\n` inside the text is sent escaped, `\x0a`); each later
/// line that starts with a space is one pair, split at its first `=`. A later line without the
/// leading space is kept as a field with an empty key rather than dropped. Returns how many
/// invalid escapes were kept literally.
pub fn parse_body(body: &[u8], text: &mut Vec<u8>, fields: &mut Vec<Field>) -> usize {
    let (escaped_text, rest) = match memchr::memchr(b'\n', body) {
        Some(i) => {
            let (t, r) = body.split_at(i);
            (t, r.get(1..).unwrap_or_default())
        }
        None => (body, &[][..]),
    };
    text.reserve(escaped_text.len());
    let mut bad = unescape_into(escaped_text, text);
    // A hostile sender fills a datagram with hundreds of empty lines: find lines with memchr,
    // make room for them all at once, and touch no buffer for an empty key or value.
    fields.reserve(memchr::memchr_iter(b'\n', rest).count() + 1);
    let mut start = 0;
    for end in memchr::memchr_iter(b'\n', rest).chain(std::iter::once(rest.len())) {
        let line = rest.get(start..end).unwrap_or_default();
        start = end + 1;
        if line.is_empty() {
            continue;
        }
        let mut field = Field::default();
        if let Some(pair) = line.strip_prefix(b" ") {
            let (key, value) = split_once(pair, b'=').unwrap_or((pair, &[]));
            if !key.is_empty() {
                bad += unescape_into(key, &mut field.key);
            }
            if !value.is_empty() {
                bad += unescape_into(value, &mut field.value);
            }
        } else {
            bad += unescape_into(line, &mut field.value);
        }
        fields.push(field);
    }
    bad
}

/// Appends `src` to `out` with every `\xNN` turned back into its byte. An escape that is not
/// `\x` and two hex digits (`\xZZ`, or cut short at the end) is kept literally; returns how many
/// there were.
pub fn unescape_into(src: &[u8], out: &mut Vec<u8>) -> usize {
    let mut bad = 0;
    let mut rest = src;
    out.reserve(src.len());
    while let Some(i) = memchr::memchr(b'\\', rest) {
        let (plain, mut escapes) = rest.split_at(i);
        out.extend_from_slice(plain);
        // Escapes come in runs (every byte of non-ASCII text is one): decode the run here
        // rather than searching again for each.
        loop {
            if let [b'\\', b'x', hi, lo, tail @ ..] = escapes {
                let (hi, lo) = (hex_value(*hi), hex_value(*lo));
                if hi | lo < 16 {
                    out.push(hi << 4 | lo);
                    escapes = tail;
                    continue;
                }
            }
            if let [backslash @ b'\\', tail @ ..] = escapes {
                out.push(*backslash);
                bad += 1;
                escapes = tail;
            }
            break;
        }
        rest = escapes;
    }
    out.extend_from_slice(rest);
    bad
}

/// Hex digit values, 0xff for bytes that are not hex digits.
const HEX: [u8; 256] = {
    let mut table = [0xff; 256];
    let mut i: u8 = 0;
    while i < 10 {
        table[(b'0' + i) as usize] = i;
        i += 1;
    }
    let mut i: u8 = 0;
    while i < 6 {
        table[(b'a' + i) as usize] = 10 + i;
        table[(b'A' + i) as usize] = 10 + i;
        i += 1;
    }
    table
};

fn hex_value(digit: u8) -> u8 {
    HEX[usize::from(digit)]
}

fn split_once(s: &[u8], sep: u8) -> Option<(&[u8], &[u8])> {
    let i = memchr::memchr(sep, s)?;
    let (a, b) = s.split_at(i);
    Some((a, b.get(1..).unwrap_or_default()))
}

fn is_digits(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(u8::is_ascii_digit)
}

fn is_release(s: &[u8]) -> bool {
    s.len() <= MAX_RELEASE_LEN
        && s.first().is_some_and(u8::is_ascii_digit)
        && s.iter()
            .all(|&b| (0x21..=0x7e).contains(&b) && b != b';' && b != b',')
}

fn parse_u64(s: &[u8], field: &'static str) -> Result<u64, ExtendedError> {
    if s.is_empty() {
        return Err(ExtendedError::EmptyNumber { field });
    }
    s.iter().try_fold(0u64, |acc, &b| {
        if !b.is_ascii_digit() {
            return Err(ExtendedError::NotANumber { field });
        }
        acc.checked_mul(10)
            .and_then(|v| v.checked_add(u64::from(b - b'0')))
            .ok_or(ExtendedError::NumberOverflow { field })
    })
}

fn parse_usize(s: &[u8], field: &'static str) -> Result<usize, ExtendedError> {
    usize::try_from(parse_u64(s, field)?).map_err(|_| ExtendedError::NumberOverflow { field })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(body: &[u8]) -> (Vec<u8>, Vec<Field>, usize) {
        let (mut text, mut fields) = (Vec::new(), Vec::new());
        let bad = parse_body(body, &mut text, &mut fields);
        (text, fields, bad)
    }

    fn field(key: &[u8], value: &[u8]) -> Field {
        Field {
            key: key.to_vec(),
            value: value.to_vec(),
        }
    }

    /// The body's lines split the plain way: the reference `parse_body` must agree with.
    fn reference_fields(rest: &[u8]) -> (Vec<Field>, usize) {
        let mut bad = 0;
        let mut fields = Vec::new();
        for line in rest.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let mut f = Field::default();
            if let Some(pair) = line.strip_prefix(b" ") {
                let i = pair.iter().position(|&b| b == b'=').unwrap_or(pair.len());
                bad += unescape_into(&pair[..i], &mut f.key);
                bad += unescape_into(pair.get(i + 1..).unwrap_or_default(), &mut f.value);
            } else {
                bad += unescape_into(line, &mut f.value);
            }
            fields.push(f);
        }
        (fields, bad)
    }

    proptest::proptest! {
        #[test]
        fn fields_are_the_body_lines(
            text in proptest::collection::vec(proptest::sample::select(b"ab=\\x4 ".to_vec()), 0..8),
            rest in proptest::collection::vec(
                proptest::sample::select(b"\n\n  ==ab\\x41z".to_vec()), 0..200),
        ) {
            let mut input = text.clone();
            input.retain(|&b| b != b'\n');
            input.push(b'\n');
            input.extend_from_slice(&rest);
            let (_, fields, bad) = body(&input);
            let (want, want_bad) = reference_fields(&rest);
            let text_bad = unescape_into(&input[..input.len() - rest.len() - 1], &mut Vec::new());
            proptest::prop_assert_eq!(fields, want);
            proptest::prop_assert_eq!(bad, want_bad + text_bad);
        }
    }

    #[test]
    fn empty_dictionary_lines_are_empty_fields() {
        let (text, fields, bad) = body(b"t\n \n \n\n \n=x");
        assert_eq!(text, b"t");
        assert_eq!(
            fields,
            [
                field(b"", b""),
                field(b"", b""),
                field(b"", b""),
                field(b"", b"=x")
            ]
        );
        assert_eq!(bad, 0);
    }

    // Captured from Debian 6.1 (tests/data/ext.pcap, frame 220).
    const DICT: &[u8] = b"6,220,1477760,-;pci_bus 0000:00: root bus resource [io  0x0d00-0xffff window]\n SUBSYSTEM=pci_bus\n DEVICE=+pci_bus:0000:00\n";

    #[test]
    fn real_record_with_dictionary() {
        assert!(looks_extended(DICT));
        let p = parse(DICT).unwrap();
        assert_eq!(
            p.header.priority,
            Priority {
                facility: 0,
                level: 6
            }
        );
        assert_eq!((p.header.seq, p.header.ts_usec), (220, 1_477_760));
        assert_eq!(p.header.cont, ContFlag::None);
        assert_eq!(p.header.release, None);
        assert_eq!(p.header.fragment, None);
        let (text, fields, bad) = body(p.body);
        assert_eq!(
            text,
            b"pci_bus 0000:00: root bus resource [io  0x0d00-0xffff window]"
        );
        assert_eq!(
            fields,
            [
                field(b"SUBSYSTEM", b"pci_bus"),
                field(b"DEVICE", b"+pci_bus:0000:00")
            ]
        );
        assert_eq!(bad, 0);
    }

    #[test]
    fn real_record_with_escapes_is_unescaped() {
        // tests/data/ext.pcap, frame 377: UTF-8, a TAB and a raw 0xff byte, all escaped.
        let p = parse(b"14,377,4373204,-;NCT-202a75 UTF8 h\\xc3\\xa9llo w\\xc3\\xb6rld \\xe2\\x9c\\x93 \\xe6\\x97\\xa5\\xe6\\x9c\\xac\\xe8\\xaa\\x9e tab[\\x09] raw-ff[\\xff]\n").unwrap();
        assert_eq!(
            p.header.priority,
            Priority {
                facility: 1,
                level: 6
            }
        );
        let (text, fields, bad) = body(p.body);
        assert_eq!(
            text,
            "NCT-202a75 UTF8 héllo wörld ✓ 日本語 tab[\t] raw-ff["
                .bytes()
                .chain(*b"\xff]")
                .collect::<Vec<u8>>()
        );
        assert!(fields.is_empty());
        assert_eq!(bad, 0);
    }

    #[test]
    fn multi_line_text_is_one_record() {
        let p = parse(b"14,378,4384917,-;a line-1/3\\x0aa line-2/3\\x0aa line-3/3\n").unwrap();
        assert_eq!(body(p.body).0, b"a line-1/3\na line-2/3\na line-3/3");
    }

    #[test]
    fn release_prefix() {
        let payload =
            b"6.12.95+deb12-amd64,14,382,5823895,-;NCT-42e60a SHORT hello-from-real-kernel\n";
        assert!(looks_extended(payload));
        let p = parse(payload).unwrap();
        assert_eq!(p.header.release, Some("6.12.95+deb12-amd64"));
        assert_eq!((p.header.seq, p.header.ts_usec), (382, 5_823_895));
        assert_eq!(body(p.body).0, b"NCT-42e60a SHORT hello-from-real-kernel");
    }

    #[test]
    fn ncfrag_caller_and_unknown_fields_are_kept() {
        let payload =
            b"6.12.95+deb12-amd64,14,595,8439407,-,caller=T1234,future=1,ncfrag=949/2031;e2\\x9c";
        let p = parse(payload).unwrap();
        assert_eq!(p.header.caller, Some(&b"T1234"[..]));
        assert_eq!(
            p.header.fragment,
            Some(FragmentHeader {
                offset: 949,
                total: 2031
            })
        );
        assert_eq!(p.header.extra_fields().collect::<Vec<_>>(), [b"future=1"]);
        assert_eq!(p.body, b"e2\\x9c");
    }

    #[test]
    fn continuation_flags() {
        for (flag, cont) in [
            (b'-', ContFlag::None),
            (b'c', ContFlag::Cont),
            (b'+', ContFlag::Plus),
            (b'z', ContFlag::Unknown(b'z')),
        ] {
            let payload = [b"4,1,2,".as_slice(), &[flag], b";x\n"].concat();
            assert_eq!(parse(&payload).unwrap().header.cont, cont);
        }
    }

    #[test]
    fn userdata_and_sysdata_lines() {
        // Documentation/networking/netconsole.rst, userdata and sysdata examples.
        let p = parse(b"12,607,22085407756,-;This is a message\n foo=bar\n qux=baz\n cpu=1\n taskname=bash\n release=6.14.0\n msgid=7\n").unwrap();
        let (text, fields, _) = body(p.body);
        assert_eq!(text, b"This is a message");
        assert_eq!(fields.len(), 6);
        assert_eq!(fields[1], field(b"qux", b"baz"));
        assert_eq!(fields[5], field(b"msgid", b"7"));
    }

    #[test]
    fn lines_without_space_or_equals_are_kept() {
        let (_, fields, _) = body(b"t\nno-space\n novalue\n");
        assert_eq!(fields, [field(b"", b"no-space"), field(b"novalue", b"")]);
    }

    #[test]
    fn plain_text_is_not_extended() {
        for plain in [
            &b"[    4.578958] NCT-5d3ac7 SHORT hello-from-real-kernel\n"[..],
            b"hello, world;\n",
            b"5 apples,3 pears;\n",
            b"D\n",
            b"",
            b",1,2,-;x",
            b"release with space,6,1,2,-;x",
            b"6,x,1,-;x",
        ] {
            assert!(
                !looks_extended(plain),
                "{:?}",
                String::from_utf8_lossy(plain)
            );
        }
    }

    #[test]
    fn malformed_headers_are_refused_with_the_reason() {
        for (payload, error) in [
            (
                &b"6,1,2x,-;text\n"[..],
                ExtendedError::NotANumber { field: "ts_usec" },
            ),
            (
                b"6,1,,-;text\n",
                ExtendedError::EmptyNumber { field: "ts_usec" },
            ),
            (
                b"6,18446744073709551616,0,-;text\n",
                ExtendedError::NumberOverflow { field: "seq" },
            ),
            (
                b"6,1,99999999999999999999999,-;text\n",
                ExtendedError::NumberOverflow { field: "ts_usec" },
            ),
            (
                b"2048,1,2,-;text\n",
                ExtendedError::PriorityOutOfRange {
                    value: 2048,
                    max: 2047,
                },
            ),
            (b"6,1,2,-text\n", ExtendedError::MissingSemicolon),
            // A `;` on a later line does not close the header.
            (b"6,1,2,-\n;text", ExtendedError::MissingSemicolon),
            (b"6,1,2;text", ExtendedError::TooFewFields { found: 3 }),
            (b"6.1.0,6,1;text", ExtendedError::TooFewFields { found: 2 }),
            (b"6,1,2,--;text", ExtendedError::BadFlag { len: 2 }),
            (b"6,1,2,;text", ExtendedError::BadFlag { len: 0 }),
            (b"6,1,2,-,ncfrag=12;text", ExtendedError::BadNcfrag),
            (
                b"6,1,2,-,ncfrag=a/12;text",
                ExtendedError::NotANumber {
                    field: "ncfrag offset",
                },
            ),
            (
                b"6,1,2,-,ncfrag=0/99999999999999999999;text",
                ExtendedError::NumberOverflow {
                    field: "ncfrag total",
                },
            ),
        ] {
            assert_eq!(
                parse(payload),
                Err(error),
                "{:?}",
                String::from_utf8_lossy(payload)
            );
        }
        // Malformed, yet extended: their errors are reported, not read as plain text.
        for payload in [
            &b"6,1,2x,-;text\n"[..],
            b"6,18446744073709551616,0,-;text\n",
            b"6,1,2,-text\n",
        ] {
            assert!(looks_extended(payload), "{payload:?}");
        }
    }

    #[test]
    fn the_largest_seq_and_priority_are_fine() {
        assert_eq!(
            parse(b"6,18446744073709551615,0,-;t").map(|p| p.header.seq),
            Ok(u64::MAX)
        );
        assert_eq!(
            parse(b"2047,1,2,-;t").map(|p| p.header.priority),
            Ok(Priority {
                facility: 255,
                level: 7
            })
        );
    }

    #[test]
    fn malformed_invalid_escape_is_kept_literally() {
        let (text, _, bad) = body(b"a\\xZZb\\x4g\\qc\n");
        assert_eq!(text, b"a\\xZZb\\x4g\\qc");
        assert_eq!(bad, 3);
    }

    #[test]
    fn malformed_truncated_escape_at_end() {
        for (input, expected) in [
            (&b"abc\\x4"[..], &b"abc\\x4"[..]),
            (b"abc\\x", b"abc\\x"),
            (b"abc\\", b"abc\\"),
        ] {
            let (text, _, bad) = body(input);
            assert_eq!(text, expected);
            assert_eq!(bad, 1);
        }
    }

    #[test]
    fn uppercase_hex_escapes_decode() {
        assert_eq!(body(b"\\xC3\\xA9").0, "é".as_bytes());
    }

    #[test]
    fn nul_bytes_are_kept() {
        // The kernel escapes NUL; a raw one is kept as it is, never truncating the text.
        let p = parse(b"6,1,2,-;a\0b\\x00c\n").unwrap();
        assert_eq!(body(p.body).0, b"a\0b\0c");
        // NUL in the header: not extended at all.
        assert!(!looks_extended(b"6\0,1,2,-;x"));
        assert_eq!(
            parse(b"6,1\0,2,-;x"),
            Err(ExtendedError::NotANumber { field: "seq" })
        );
    }

    #[test]
    fn empty_payload() {
        assert!(!looks_extended(b""));
        assert_eq!(parse(b""), Err(ExtendedError::MissingSemicolon));
    }

    #[test]
    fn empty_body() {
        let p = parse(b"6,1,2,-;").unwrap();
        assert_eq!(body(p.body), (Vec::new(), Vec::new(), 0));
    }
}
