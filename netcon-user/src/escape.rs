//! Rendering untrusted bytes so that they cannot drive a terminal.
//!
//! Anything that arrives over the network may be spoofed: control characters and escape sequences
//! are shown visibly (`\n`, `\t`, `\x1b`), never written raw. So are the characters that make
//! text read differently from what it is without being controls: the Unicode bidirectional
//! overrides, embeddings and isolates (U+202E turns `gnp.exe` into what reads as `exe.png`) and
//! the zero-width ones (a line that looks like another sender's but is not).

use std::fmt::Write as _;

/// Appends `bytes` to `out` with every control character, `\`, and every byte that is not part of
/// valid UTF-8 shown as an escape. Printable UTF-8 (including non-ASCII) is kept as it is.
pub fn escape_into(bytes: &[u8], out: &mut String) {
    // Kernel log text is nearly always printable ASCII: its longest such prefix is copied in
    // one go, found 16 bytes at a time without a branch per byte. An ASCII byte always ends a
    // UTF-8 sequence, so the rest decodes exactly as it would have as part of the whole.
    let plain = plain_ascii_prefix(bytes);
    let (head, rest) = bytes.split_at(plain);
    // SAFETY: `head` is printable ASCII only (plain_ascii_prefix), which is valid UTF-8; checking
    // it again cost 3% of the reader's time in a profile.
    out.push_str(unsafe { std::str::from_utf8_unchecked(head) });
    if !rest.is_empty() {
        escape_general(rest, out);
    }
}

/// Whether `b` is printable ASCII other than a backslash: a byte [`escape_into`] copies as it is.
const fn is_plain_ascii(b: u8) -> bool {
    b.wrapping_sub(0x20) < 0x5f && b != b'\\'
}

/// The length of the longest prefix of `bytes` made of [`is_plain_ascii`] bytes.
fn plain_ascii_prefix(bytes: &[u8]) -> usize {
    const CHUNK: usize = 16;
    let mut at = 0;
    // `fold` with `&` rather than `all`: no early exit inside a chunk, so the compiler can test
    // the 16 bytes with vector instructions.
    for chunk in bytes.chunks_exact(CHUNK) {
        if !chunk.iter().fold(true, |all, &b| all & is_plain_ascii(b)) {
            break;
        }
        at += CHUNK;
    }
    at + bytes[at..]
        .iter()
        .position(|&b| !is_plain_ascii(b))
        .unwrap_or(bytes.len() - at)
}

/// [`escape_into`] for any bytes, character by character where needed.
fn escape_general(bytes: &[u8], out: &mut String) {
    for chunk in bytes.utf8_chunks() {
        // Runs of characters that need no escape are copied whole: this is on the path of every
        // record, and per-character pushes cost more than the rest of formatting together.
        let mut valid = chunk.valid();
        while let Some((at, c)) = valid
            .char_indices()
            .find(|&(_, c)| c == '\\' || c.is_control() || is_invisible(c))
        {
            out.push_str(&valid[..at]);
            match c {
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                // C0, DEL and C1 controls (C1 includes the 8-bit CSI, U+009B).
                c => {
                    let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
                }
            }
            valid = &valid[at + c.len_utf8()..];
        }
        out.push_str(valid);
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
}

/// Whether `c` changes how text around it reads without showing itself: bidirectional marks,
/// embeddings, overrides and isolates (U+061C, U+200E-U+200F, U+202A-U+202E, U+2066-U+2069) and
/// zero-width characters (U+200B-U+200D, U+2060, U+FEFF). Unicode TR 9 and UTS 39 list them.
#[must_use]
pub fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{061c}'
            | '\u{200b}'..='\u{200f}'
            | '\u{202a}'..='\u{202e}'
            | '\u{2060}'
            | '\u{2066}'..='\u{2069}'
            | '\u{feff}'
    )
}

/// [`escape_into`] into a new `String`.
#[must_use]
pub fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    escape_into(bytes, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_printable_utf8() {
        assert_eq!(escape("héllo ✓ 日本".as_bytes()), "héllo ✓ 日本");
    }

    #[test]
    fn escapes_controls_and_backslash() {
        assert_eq!(
            escape(b"a\tb\nc\\d\x1b[31m\x00"),
            "a\\tb\\nc\\\\d\\u{1b}[31m\\u{0}"
        );
    }

    #[test]
    fn escapes_c1_controls() {
        assert_eq!(escape("x\u{9b}2J".as_bytes()), "x\\u{9b}2J");
    }

    proptest::proptest! {
        /// The fast path (whole runs) agrees with escaping one character at a time.
        #[test]
        fn runs_agree_with_char_by_char(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            let mut expected = String::new();
            for chunk in bytes.utf8_chunks() {
                for c in chunk.valid().chars() {
                    match c {
                        '\\' => expected.push_str("\\\\"),
                        '\n' => expected.push_str("\\n"),
                        '\r' => expected.push_str("\\r"),
                        '\t' => expected.push_str("\\t"),
                        c if c.is_control() || is_invisible(c) => {
                            let _ = write!(expected, "\\u{{{:x}}}", u32::from(c));
                        }
                        c => expected.push(c),
                    }
                }
                for b in chunk.invalid() {
                    let _ = write!(expected, "\\x{b:02x}");
                }
            }
            proptest::prop_assert_eq!(escape(&bytes), expected);
        }
    }

    proptest::proptest! {
        /// The plain-ASCII fast path gives what the general path gives, for text that is mostly
        /// printable ASCII (long runs, so whole 16-byte chunks are taken) with any byte mixed in.
        #[test]
        fn plain_ascii_fast_path_agrees_with_the_general_path(
            text in "[ -~]{0,200}",
            odd in proptest::collection::vec((0usize..220, proptest::prelude::any::<u8>()), 0..4),
        ) {
            let mut bytes = text.into_bytes();
            for (at, b) in odd {
                bytes.insert(at.min(bytes.len()), b);
            }
            let mut fast = String::new();
            escape_into(&bytes, &mut fast);
            let mut general = String::new();
            escape_general(&bytes, &mut general);
            proptest::prop_assert_eq!(fast, general);
        }
    }

    #[test]
    fn plain_prefix_stops_at_the_first_byte_to_escape() {
        let long = "a".repeat(40);
        assert_eq!(plain_ascii_prefix(long.as_bytes()), 40);
        for (i, special) in [b'\\', b'\n', 0x7f, 0x80, 0x1f].into_iter().enumerate() {
            let mut bytes = long.clone().into_bytes();
            bytes[17 + i] = special;
            assert_eq!(plain_ascii_prefix(&bytes), 17 + i, "byte {special:#x}");
        }
        assert_eq!(plain_ascii_prefix(b" ~"), 2, "space and tilde are plain");
        assert_eq!(plain_ascii_prefix(b""), 0);
    }

    #[test]
    fn escapes_bidi_overrides_and_zero_width_characters() {
        assert_eq!(
            escape("a\u{202e}gnp.exe\u{200b}b\u{2066}c\u{feff}".as_bytes()),
            "a\\u{202e}gnp.exe\\u{200b}b\\u{2066}c\\u{feff}"
        );
        // Ordinary non-ASCII stays as it is.
        assert_eq!(escape("é ✓ שלום".as_bytes()), "é ✓ שלום");
    }

    #[test]
    fn escapes_invalid_utf8_bytewise() {
        assert_eq!(escape(b"raw[\xff]\xc3"), "raw[\\xff]\\xc3");
    }
}
