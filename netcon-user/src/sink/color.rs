//! `--color`: levels colored the way `dmesg --color` does (util-linux `sys-utils/dmesg.c`):
//! emerg and alert reverse red, crit bold red, err red, warning bold; lower levels plain. Loss,
//! reboot and malformed events are bold yellow so they stand out, panic reports reverse red.
//!
//! Colors wrap whole lines that [`super::text`] already escaped, so no byte from the network is
//! ever written raw, colored or not.

use crate::netconsole::Event;

const REVERSE_RED: &str = "\x1b[7;31m";
const BOLD_RED: &str = "\x1b[1;31m";
const RED: &str = "\x1b[31m";
const BOLD: &str = "\x1b[1m";
const BOLD_YELLOW: &str = "\x1b[1;33m";
const RESET: &str = "\x1b[0m";

/// The color for `event`'s lines, if any.
#[must_use]
pub fn style(event: &Event) -> Option<&'static str> {
    match event {
        Event::Record(record) => {
            if record.flags.panic.is_some() {
                return Some(REVERSE_RED);
            }
            match record.priority?.level {
                0 | 1 => Some(REVERSE_RED),
                2 => Some(BOLD_RED),
                3 => Some(RED),
                4 => Some(BOLD),
                _ => None,
            }
        }
        Event::Lost(_) | Event::Rebooted(_) | Event::Malformed(_) => Some(BOLD_YELLOW),
        Event::Duplicate(_) => None,
    }
}

/// Wraps every line of `lines` (each ending in `\n`) in `style` and a reset, appending to `out`.
pub fn paint(lines: &str, style: &str, out: &mut String) {
    for line in lines.split_inclusive('\n') {
        let (body, newline) = line.strip_suffix('\n').map_or((line, ""), |b| (b, "\n"));
        out.push_str(style);
        out.push_str(body);
        out.push_str(RESET);
        out.push_str(newline);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paints_each_line_and_resets_before_the_newline() {
        let mut out = String::new();
        paint("a\n  b\n", RED, &mut out);
        assert_eq!(out, "\x1b[31ma\x1b[0m\n\x1b[31m  b\x1b[0m\n");
    }
}
