//! Crash-report attribution: which records belong to a panic, oops or BUG report.

use super::record::{PanicKind, PanicMark, Record};

/// Texts that begin a crash report (`kernel/panic.c`, `arch/x86/kernel/dumpstack.c`,
/// `arch/x86/kernel/traps.c`, `kernel/watchdog.c`, `lib/bug.c`). Order matters: the soft lockup
/// line also starts with text that contains `BUG:`.
const PANIC_MARKERS: &[(&[u8], PanicKind)] = &[
    (b"Kernel panic - not syncing", PanicKind::Panic),
    (b"---[ end Kernel panic", PanicKind::Panic),
    (b"Oops:", PanicKind::Oops),
    (b"watchdog: BUG: soft lockup", PanicKind::SoftLockup),
    (b"BUG:", PanicKind::Bug),
    (b"kernel BUG at", PanicKind::Bug),
    (
        b"general protection fault",
        PanicKind::GeneralProtectionFault,
    ),
];

/// The line that closes a report (`---[ end trace <id> ]---`, `---[ end Kernel panic ... ]---`).
const PANIC_END: &[u8] = b"---[ end ";

/// Which crash-report marker `text` begins with, if any.
#[must_use]
pub fn panic_marker(text: &[u8]) -> Option<PanicKind> {
    let n = text.iter().take_while(|&&b| b == b' ').count();
    let text = text.get(n..).unwrap_or_default();
    PANIC_MARKERS
        .iter()
        .find(|(m, _)| text.starts_with(m))
        .map(|&(_, k)| k)
}

/// Attributes the records after a crash report's first line to the same report.
#[derive(Debug, Default, Clone, Copy)]
pub struct PanicTracker {
    active: Option<(u64, PanicKind, u32)>,
}

impl PanicTracker {
    /// Marks `record` if it begins a report or follows one (at most `context` records, until a
    /// `---[ end` line). `next_event` numbers new reports.
    pub fn mark(&mut self, record: &mut Record, context: u32, next_event: &mut u64) {
        let marker = panic_marker(&record.text);
        let ends = {
            let n = record.text.iter().take_while(|&&b| b == b' ').count();
            record
                .text
                .get(n..)
                .is_some_and(|t| t.starts_with(PANIC_END))
        };
        let mark = match (self.active, marker) {
            (Some((event, kind, left)), _) if left > 0 => {
                self.active = Some((event, kind, left - 1));
                Some(PanicMark {
                    event,
                    kind,
                    begins: false,
                })
            }
            (_, Some(kind)) => {
                let event = *next_event;
                *next_event += 1;
                self.active = Some((event, kind, context));
                Some(PanicMark {
                    event,
                    kind,
                    begins: true,
                })
            }
            _ => {
                self.active = None;
                None
            }
        };
        if ends {
            self.active = None;
        }
        record.flags.panic = mark;
    }

    /// Forgets an open report (the sender rebooted).
    pub fn reset(&mut self) {
        self.active = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panic_markers() {
        for (text, kind) in [
            (
                &b"Kernel panic - not syncing: Fatal exception"[..],
                PanicKind::Panic,
            ),
            (
                b"---[ end Kernel panic - not syncing: x ]---",
                PanicKind::Panic,
            ),
            (b"Oops: 0002 [#1] PREEMPT SMP NOPTI", PanicKind::Oops),
            (
                b"BUG: kernel NULL pointer dereference, address: 0",
                PanicKind::Bug,
            ),
            (b"kernel BUG at mm/slub.c:42!", PanicKind::Bug),
            (
                b"general protection fault, probably for non-canonical address",
                PanicKind::GeneralProtectionFault,
            ),
            (
                b"watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [a:1]",
                PanicKind::SoftLockup,
            ),
        ] {
            assert_eq!(
                panic_marker(text),
                Some(kind),
                "{}",
                String::from_utf8_lossy(text)
            );
        }
        assert_eq!(panic_marker(b"RIP: 0010:foo+0x1/0x2"), None);
        assert_eq!(panic_marker(b"a BUG: in the middle"), None);
    }
}
