//! The extended parser on any bytes, and the escape round trip: whatever the kernel escapes
//! (`kernel/printk/printk.c`, `msg_add_ext_text`) unescapes to the original bytes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use netcon::netconsole::extended::{parse, parse_body, unescape_into};

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = parse(data) {
        let (mut text, mut fields) = (Vec::new(), Vec::new());
        parse_body(p.body, &mut text, &mut fields);
        // A raw newline in the text can only come from an escape (\x0a).
        assert!(!text.contains(&b'\n') || data.contains(&b'\\'));
    }
    let mut escaped = Vec::with_capacity(data.len() * 4);
    for &b in data {
        if b < b' ' || b >= 127 || b == b'\\' {
            escaped.extend_from_slice(format!("\\x{b:02x}").as_bytes());
        } else {
            escaped.push(b);
        }
    }
    let mut back = Vec::new();
    assert_eq!(unescape_into(&escaped, &mut back), 0);
    assert_eq!(back, data);
});
