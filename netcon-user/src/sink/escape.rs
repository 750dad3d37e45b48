//! Rendering untrusted bytes so that they cannot drive a terminal.
//!
//! Anything that arrives over the network may be spoofed: control characters and escape sequences
//! are shown visibly (`\n`, `\t`, `\x1b`), never written raw.

use std::fmt::Write as _;

/// Appends `bytes` to `out` with every control character, `\`, and every byte that is not part of
/// valid UTF-8 shown as an escape. Printable UTF-8 (including non-ASCII) is kept as it is.
pub fn escape_into(bytes: &[u8], out: &mut String) {
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                // C0, DEL and C1 controls (C1 includes the 8-bit CSI, U+009B).
                c if c.is_control() => {
                    let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
                }
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
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

    #[test]
    fn escapes_invalid_utf8_bytewise() {
        assert_eq!(escape(b"raw[\xff]\xc3"), "raw[\\xff]\\xc3");
    }
}
