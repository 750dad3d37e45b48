//! The decoder's bounds and timeouts, each with its unit and default.

use std::time::Duration;

use super::frag::FragLimits;

/// Senders tracked at once: 10,000. Beyond it, the least recently heard is evicted (its pending
/// state emitted) and counted.
pub const DEFAULT_MAX_SENDERS: usize = 10_000;
/// Plain mode: how long a line without its `\n` waits for the rest: 500 ms. The kernel sends
/// the rest of a cut record right away, so this only matters when a datagram was lost.
pub const DEFAULT_PLAIN_IDLE_TIMEOUT: Duration = Duration::from_millis(500);
/// Plain mode: bytes held for one unfinished line before it is emitted as partial: 16 KiB. A
/// plain console record is at most about 1 KiB (`CONSOLE_LOG_MAX`, `kernel/printk/printk.c`).
pub const DEFAULT_MAX_PLAIN_LINE: usize = 16 * 1024;
/// `ncfrag`: time from a record's first fragment until what arrived is emitted, marked
/// incomplete: 1 s. Fragments of one record leave the sender within microseconds.
pub const DEFAULT_FRAGMENT_TIMEOUT: Duration = Duration::from_secs(1);
/// `ncfrag`: largest `<total>` accepted, bytes: 32 KiB. The kernel's body is at most
/// `CONSOLE_EXT_LOG_MAX` (8 KiB) plus userdata and sysdata (under 5 KiB).
pub const DEFAULT_MAX_FRAGMENT_TOTAL: usize = 32 * 1024;
/// `ncfrag`: records being reassembled at once, all senders together: 256.
pub const DEFAULT_MAX_FRAGMENT_ENTRIES: usize = 256;
/// `ncfrag`: bytes reserved for records being reassembled, all senders together: 4 MiB.
pub const DEFAULT_MAX_FRAGMENT_BYTES: usize = 4 * 1024 * 1024;
/// `ncfrag`: separate byte ranges kept per record: 64 (the kernel sends at most a few dozen
/// fragments per record, in order, so its ranges merge into one).
pub const DEFAULT_MAX_FRAGMENT_RANGES: usize = 64;
/// Continuation (flag `c`): how long a record waits for the one completing it: 1 s.
pub const DEFAULT_CONTINUATION_TIMEOUT: Duration = Duration::from_secs(1);
/// Continuation: bytes of content (text, and every field's key and value) joined into one
/// chain at most: 8 KiB, the kernel's own bound on one formatted extended record
/// (`CONSOLE_EXT_LOG_MAX`; since 6.2 `PRINTK_MESSAGE_MAX`, 2 KiB, `kernel/printk/internal.h`),
/// and a `LOG_CONT` line is one record in the ring buffer (`PRINTKRB_RECORD_MAX`, 1 KiB). A chain
/// that reaches it is emitted as it is, marked partial, and the next piece starts a new one.
pub const DEFAULT_MAX_CONTINUATION_BYTES: usize = 8 * 1024;
/// Continuation: `KEY=value` fields joined into one chain at most: 512. One record carries at
/// most two dictionary fields (`struct dev_printk_info`), up to 256 userdata fields
/// (`MAX_USERDATA_ITEMS`, `drivers/net/netconsole.c`) and four sysdata fields; empty dictionary
/// lines from a forged sender would otherwise cost 48 bytes of bookkeeping per two bytes sent.
pub const DEFAULT_MAX_CONTINUATION_FIELDS: usize = 512;
/// Sequence tracking: a seq more than this far above the highest one heard (2^32) is not taken
/// as records lost, but reported as a suspicious datagram and ignored: no kernel logs four
/// billion records between two that reach the collector, while a forged seq near 2^64 would
/// otherwise report a loss of quintillions and move the sender's sequence out of reach.
pub const MAX_SEQ_JUMP: u64 = 1 << 32;
/// Duplicates: a payload identical to one heard from the same sender at most this long ago is a
/// copy (two interfaces, mirror port): 500 ms. Copies arrive microseconds to milliseconds apart;
/// a kernel sends the same bytes twice only without timestamps (plain mode, `printk.time=0`) or
/// after a reboot, which takes longer.
pub const DEFAULT_DUPLICATE_WINDOW: Duration = Duration::from_millis(500);
/// Duplicates: payload fingerprints remembered per sender: 128 (more than a NAPI poll budget of
/// frames by which one interface's copy can lag the other's).
pub const DEFAULT_DUPLICATE_HISTORY: usize = 128;
/// Sequence tracking: a seq at most this many records below the highest, with a timestamp not
/// far behind, is a late arrival rather than a reboot: 128 records.
pub const DEFAULT_REORDER_WINDOW: u64 = 128;
/// Reboot detection: a kernel timestamp this far behind the latest one means a new boot: 1 s.
/// Within one boot, timestamps only go back by CPU clock skew (microseconds).
pub const DEFAULT_REBOOT_BACKSTEP: Duration = Duration::from_secs(1);
/// Reboot detection: a record whose implied boot time (receive time minus kernel timestamp) is
/// this much later than the sender's estimated boot time belongs to a new boot: 1 s. A record
/// that is merely late implies the same boot time plus its delay on the way, and netconsole's
/// path (one UDP datagram, sent from the printk call or the console thread) adds milliseconds;
/// a reboot adds at least the old boot's uptime. This is what tells the new boot of a configfs
/// target, which replays nothing, from late records of the old one: its first sequence numbers
/// and timestamps can be just below, or even above, the last ones heard.
pub const DEFAULT_MAX_BOOT_SHIFT: Duration = Duration::from_secs(1);
/// Crash reports: records after the first line attributed to the same report, at most: 200 (an
/// oops with its registers, modules and call trace is about 50 lines). A `---[ end` line closes
/// the report earlier.
pub const DEFAULT_PANIC_CONTEXT: u32 = 200;

/// Every bound and timeout of the decoder. `Default` uses the `DEFAULT_*` constants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecoderConfig {
    /// Senders tracked at once. Default [`DEFAULT_MAX_SENDERS`] (10,000).
    pub max_senders: usize,
    /// Plain mode idle timeout for an unfinished line. Default [`DEFAULT_PLAIN_IDLE_TIMEOUT`]
    /// (500 ms).
    pub plain_idle_timeout: Duration,
    /// Plain mode bytes held per unfinished line. Default [`DEFAULT_MAX_PLAIN_LINE`] (16 KiB).
    pub max_plain_line: usize,
    /// `ncfrag` deadline per record. Default [`DEFAULT_FRAGMENT_TIMEOUT`] (1 s).
    pub fragment_timeout: Duration,
    /// `ncfrag` largest `<total>`, bytes. Default [`DEFAULT_MAX_FRAGMENT_TOTAL`] (32 KiB).
    pub max_fragment_total: usize,
    /// `ncfrag` records pending at once. Default [`DEFAULT_MAX_FRAGMENT_ENTRIES`] (256).
    pub max_fragment_entries: usize,
    /// `ncfrag` bytes pending at once. Default [`DEFAULT_MAX_FRAGMENT_BYTES`] (4 MiB).
    pub max_fragment_bytes: usize,
    /// `ncfrag` byte ranges per record. Default [`DEFAULT_MAX_FRAGMENT_RANGES`] (64).
    pub max_fragment_ranges: usize,
    /// Continuation wait. Default [`DEFAULT_CONTINUATION_TIMEOUT`] (1 s).
    pub continuation_timeout: Duration,
    /// Continuation content bytes. Default [`DEFAULT_MAX_CONTINUATION_BYTES`] (8 KiB).
    pub max_continuation_bytes: usize,
    /// Continuation fields. Default [`DEFAULT_MAX_CONTINUATION_FIELDS`] (512).
    pub max_continuation_fields: usize,
    /// Duplicate window. Default [`DEFAULT_DUPLICATE_WINDOW`] (500 ms).
    pub duplicate_window: Duration,
    /// Fingerprints per sender. Default [`DEFAULT_DUPLICATE_HISTORY`] (128).
    pub duplicate_history: usize,
    /// Late-arrival window, records. Default [`DEFAULT_REORDER_WINDOW`] (128).
    pub reorder_window: u64,
    /// Timestamp step back that means a reboot. Default [`DEFAULT_REBOOT_BACKSTEP`] (1 s).
    pub reboot_backstep: Duration,
    /// Implied boot time moving later by more than this means a reboot. Default
    /// [`DEFAULT_MAX_BOOT_SHIFT`] (1 s).
    pub max_boot_shift: Duration,
    /// Records attributed to a crash report. Default [`DEFAULT_PANIC_CONTEXT`] (200).
    pub panic_context: u32,
}

impl Default for DecoderConfig {
    fn default() -> Self {
        Self {
            max_senders: DEFAULT_MAX_SENDERS,
            plain_idle_timeout: DEFAULT_PLAIN_IDLE_TIMEOUT,
            max_plain_line: DEFAULT_MAX_PLAIN_LINE,
            fragment_timeout: DEFAULT_FRAGMENT_TIMEOUT,
            max_fragment_total: DEFAULT_MAX_FRAGMENT_TOTAL,
            max_fragment_entries: DEFAULT_MAX_FRAGMENT_ENTRIES,
            max_fragment_bytes: DEFAULT_MAX_FRAGMENT_BYTES,
            max_fragment_ranges: DEFAULT_MAX_FRAGMENT_RANGES,
            continuation_timeout: DEFAULT_CONTINUATION_TIMEOUT,
            max_continuation_bytes: DEFAULT_MAX_CONTINUATION_BYTES,
            max_continuation_fields: DEFAULT_MAX_CONTINUATION_FIELDS,
            duplicate_window: DEFAULT_DUPLICATE_WINDOW,
            duplicate_history: DEFAULT_DUPLICATE_HISTORY,
            reorder_window: DEFAULT_REORDER_WINDOW,
            reboot_backstep: DEFAULT_REBOOT_BACKSTEP,
            max_boot_shift: DEFAULT_MAX_BOOT_SHIFT,
            panic_context: DEFAULT_PANIC_CONTEXT,
        }
    }
}

impl DecoderConfig {
    pub(super) fn frag_limits(&self) -> FragLimits {
        FragLimits {
            max_total: self.max_fragment_total,
            max_entries: self.max_fragment_entries,
            max_bytes: self.max_fragment_bytes,
            max_ranges: self.max_fragment_ranges,
            timeout: self.fragment_timeout,
        }
    }

    pub(super) fn backstep_us(&self) -> u64 {
        u64::try_from(self.reboot_backstep.as_micros()).unwrap_or(u64::MAX)
    }

    pub(super) fn boot_shift_us(&self) -> u64 {
        u64::try_from(self.max_boot_shift.as_micros()).unwrap_or(u64::MAX)
    }
}
