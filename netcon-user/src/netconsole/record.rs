//! The decoded record and the events the decoder emits: the one set of types every sink uses.
//!
//! Fields are public and plain so that later sinks (JSON, syslog) can read them without helpers.
//! Text is kept as the original bytes (the kernel does not promise UTF-8); [`Record::text_display`]
//! is the lossless, terminal-safe view.

use std::fmt;
use std::net::SocketAddr;

use chrono::{DateTime, Utc};

use super::DecodeError;
use crate::escape::escape_into;

/// Which netconsole output format a payload used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordFormat {
    /// Console text as it is, no header (`drivers/net/netconsole.c`, `write_msg`).
    Plain,
    /// The `/dev/kmsg`-style header (`drivers/net/netconsole.c`, `write_ext_msg`; the header is
    /// `kernel/printk/printk.c`, `info_print_ext_header`).
    Extended,
}

impl RecordFormat {
    /// `"plain"` or `"extended"`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Plain => "plain",
            Self::Extended => "extended",
        }
    }
}

/// A syslog priority, `facility * 8 + level` (`kernel/printk/printk.c`, `info_print_ext_header`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Priority {
    /// Syslog facility: 0 for the kernel, 1 (`user`) for records written to `/dev/kmsg`.
    pub facility: u8,
    /// Syslog level, 0 (`emerg`) to 7 (`debug`).
    pub level: u8,
}

impl Priority {
    /// The largest `<pri>` the kernel can send: its facility is a `u8` (`struct printk_info`).
    pub const MAX_PRI: u16 = 255 * 8 + 7;

    /// Splits a `<pri>` value; `None` above [`Self::MAX_PRI`].
    #[must_use]
    pub fn from_pri(pri: u16) -> Option<Self> {
        if pri > Self::MAX_PRI {
            return None;
        }
        Some(Self {
            facility: u8::try_from(pri >> 3).ok()?,
            level: u8::try_from(pri & 7).ok()?,
        })
    }

    /// The combined `<pri>` value.
    #[must_use]
    pub fn pri(self) -> u16 {
        u16::from(self.facility) * 8 + u16::from(self.level & 7)
    }

    /// The facility's syslog name (as util-linux `dmesg` names them), `None` above `local7`.
    #[must_use]
    pub fn facility_name(self) -> Option<&'static str> {
        const NAMES: [&str; 24] = [
            "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron",
            "authpriv", "ftp", "res0", "res1", "res2", "res3", "local0", "local1", "local2",
            "local3", "local4", "local5", "local6", "local7",
        ];
        NAMES.get(usize::from(self.facility)).copied()
    }

    /// The level's syslog name.
    #[must_use]
    pub fn level_name(self) -> &'static str {
        match self.level {
            0 => "emerg",
            1 => "alert",
            2 => "crit",
            3 => "err",
            4 => "warning",
            5 => "notice",
            6 => "info",
            _ => "debug",
        }
    }
}

/// Who printed the record: `caller=T<pid>` or `caller=C<cpu>` in the extended header, `[T<pid>]`
/// after the timestamp in plain mode (`CONFIG_PRINTK_CALLER`, `kernel/printk/printk.c`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Caller {
    /// Printed from task context: the task's pid.
    Task(u32),
    /// Printed from interrupt context: the CPU number.
    Cpu(u32),
    /// A value of another shape, kept as it came.
    Unknown(String),
}

impl Caller {
    /// Parses `T123`, `C1`; anything else is kept as [`Caller::Unknown`].
    #[must_use]
    pub fn parse(value: &[u8]) -> Self {
        let number = |digits: &[u8]| -> Option<u32> {
            if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
                return None;
            }
            std::str::from_utf8(digits).ok()?.parse().ok()
        };
        let parsed = match value.split_first() {
            Some((b'T', rest)) => number(rest).map(Self::Task),
            Some((b'C', rest)) => number(rest).map(Self::Cpu),
            _ => None,
        };
        parsed.unwrap_or_else(|| Self::Unknown(String::from_utf8_lossy(value).into_owned()))
    }
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Task(pid) => write!(f, "T{pid}"),
            Self::Cpu(cpu) => write!(f, "C{cpu}"),
            Self::Unknown(s) => f.write_str(s),
        }
    }
}

/// The continuation flag of an extended header (`kernel/printk/printk.c`,
/// `info_print_ext_header`; `Documentation/ABI/testing/dev-kmsg`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ContFlag {
    /// `-`: a record of its own.
    None,
    /// `c`: `LOG_CONT`, a fragment of a line that the next record(s) complete.
    Cont,
    /// `+`: older kernels' mark for a record continuing the previous one.
    Plus,
    /// Any other byte, kept rather than rejected.
    Unknown(u8),
}

impl ContFlag {
    /// Maps the flag byte.
    #[must_use]
    pub fn from_byte(b: u8) -> Self {
        match b {
            b'-' => Self::None,
            b'c' => Self::Cont,
            b'+' => Self::Plus,
            other => Self::Unknown(other),
        }
    }

    /// The byte as sent.
    #[must_use]
    pub fn as_byte(self) -> u8 {
        match self {
            Self::None => b'-',
            Self::Cont => b'c',
            Self::Plus => b'+',
            Self::Unknown(b) => b,
        }
    }
}

/// One `KEY=value` line after the text: the record's dictionary (`SUBSYSTEM=`, `DEVICE=`), then
/// netconsole userdata and sysdata (`drivers/net/netconsole.c`). Bytes are unescaped.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Field {
    /// The key (empty for a line that did not start with a space: kept rather than dropped).
    pub key: Vec<u8>,
    /// The value (empty when the line had no `=`).
    pub value: Vec<u8>,
}

/// Typed netconsole sysdata (kernel 6.14 and later, `drivers/net/netconsole.c`): ` cpu=N`,
/// ` taskname=NAME`, ` release=REL`, ` msgid=N`. The same pairs also stay in
/// [`Record::fields`]. When a key occurs more than once, the last one wins (sysdata comes last).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Sysdata {
    /// CPU the message was sent from.
    pub cpu: Option<u32>,
    /// Name of the task that printed (`comm`, at most 15 bytes on the sender).
    pub taskname: Option<Vec<u8>>,
    /// The sender kernel's release.
    pub release: Option<String>,
    /// Per-target message counter (a `u32` that wraps): gaps mean dropped messages.
    pub msgid: Option<u32>,
}

impl Sysdata {
    /// Fills the typed fields from `fields`, last occurrence wins; a value that does not parse is
    /// left to the plain pairs.
    #[must_use]
    pub fn from_fields(fields: &[Field]) -> Self {
        let mut out = Self::default();
        let number = |v: &[u8]| -> Option<u32> {
            if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
                return None;
            }
            std::str::from_utf8(v).ok()?.parse().ok()
        };
        for f in fields {
            match f.key.as_slice() {
                b"cpu" => out.cpu = number(&f.value).or(out.cpu),
                b"taskname" => out.taskname = Some(f.value.clone()),
                b"release" => {
                    if let Ok(s) = std::str::from_utf8(&f.value) {
                        out.release = Some(s.to_owned());
                    }
                }
                b"msgid" => out.msgid = number(&f.value).or(out.msgid),
                _ => {}
            }
        }
        out
    }

    /// Whether any typed field is set.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.cpu.is_none()
            && self.taskname.is_none()
            && self.release.is_none()
            && self.msgid.is_none()
    }
}

/// What kind of crash report a record begins or belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PanicKind {
    /// `Kernel panic - not syncing` (`kernel/panic.c`), or its `---[ end Kernel panic` trailer.
    Panic,
    /// `Oops:` (`arch/x86/kernel/dumpstack.c`, `__die_header`).
    Oops,
    /// `BUG:` or `kernel BUG at` (`lib/bug.c`, `mm/`, ...).
    Bug,
    /// `general protection fault` (`arch/x86/kernel/traps.c`).
    GeneralProtectionFault,
    /// `watchdog: BUG: soft lockup` (`kernel/watchdog.c`).
    SoftLockup,
}

impl PanicKind {
    /// A short lowercase name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Panic => "panic",
            Self::Oops => "oops",
            Self::Bug => "bug",
            Self::GeneralProtectionFault => "general-protection-fault",
            Self::SoftLockup => "soft-lockup",
        }
    }
}

/// Marks a record as part of a crash report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PanicMark {
    /// Identifies the crash report (unique within one decoder): the record that begins it and
    /// the `RIP:`/`Call Trace:` lines after it share it.
    pub event: u64,
    /// The kind of the record that began the report.
    pub kind: PanicKind,
    /// This record begins the report.
    pub begins: bool,
}

/// Reassembly fell short: some `ncfrag` bytes never arrived before the deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Incomplete {
    /// Bytes of the (escaped) body that are missing.
    pub missing_bytes: usize,
    /// The body's announced size (`ncfrag=<off>/<total>`).
    pub total_bytes: usize,
}

/// How the record was put together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Flags {
    /// Reassembled from `ncfrag` fragments.
    pub fragmented: bool,
    /// Fragments were missing when the deadline passed; the text holds what arrived.
    pub incomplete: Option<Incomplete>,
    /// Plain mode: the line never got its `\n` (idle timeout, size bound, or exit).
    pub partial: bool,
    /// Joined from continuation records (flag `c`/`+`), or a continuation piece whose completion
    /// never came.
    pub continued: bool,
    /// Part of a panic or oops report.
    pub panic: Option<PanicMark>,
}

/// One kernel log record, as decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// When its (first) datagram was captured, wall clock.
    pub received: DateTime<Utc>,
    /// Sender address and port.
    pub sender: SocketAddr,
    /// Interface index it arrived on.
    pub ifindex: u32,
    /// Plain or extended.
    pub format: RecordFormat,
    /// Facility and level (extended mode only: plain mode does not carry them).
    pub priority: Option<Priority>,
    /// printk sequence number (extended mode only).
    pub seq: Option<u64>,
    /// Kernel timestamp: microseconds since the sender booted.
    pub timestamp_us: Option<u64>,
    /// Estimated wall-clock time of [`Self::timestamp_us`]: the sender's estimated boot time
    /// (the minimum of receive time minus kernel timestamp seen so far) plus the timestamp.
    pub kernel_time: Option<DateTime<Utc>>,
    /// Kernel release from the header prefix (`r` targets) or from sysdata.
    pub release: Option<String>,
    /// Who printed it (`CONFIG_PRINTK_CALLER`).
    pub caller: Option<Caller>,
    /// The continuation flag (extended mode; [`ContFlag::None`] in plain mode).
    pub cont: ContFlag,
    /// Header fields this decoder does not know, as sent (never rejected).
    pub header_extra: Vec<String>,
    /// The text, unescaped to the original bytes. Lines of a multi-line record are joined by `\n`
    /// (plain mode: with their timestamp prefixes removed); no trailing `\n`.
    pub text: Vec<u8>,
    /// `KEY=value` pairs in the order sent.
    pub fields: Vec<Field>,
    /// Typed sysdata.
    pub sysdata: Sysdata,
    /// How it was put together.
    pub flags: Flags,
}

impl Record {
    /// A lossless, terminal-safe view of the text (see [`crate::escape::escape_into`]).
    #[must_use]
    pub fn text_display(&self) -> Escaped<'_> {
        Escaped(&self.text)
    }

    /// The lines of the text, as `split(b'\n')` gives them (an empty text is one empty line),
    /// found with `memchr`: a byte-at-a-time split was 5% of the reader's time in a profile.
    pub fn lines(&self) -> impl Iterator<Item = &[u8]> {
        let text = &self.text[..];
        let mut start = 0;
        memchr::memchr_iter(b'\n', text)
            .chain(std::iter::once(text.len()))
            .map(move |end| {
                let line = text.get(start..end).unwrap_or_default();
                start = end + 1;
                line
            })
    }

    /// Bytes this record holds, for the memory budget: the struct and every buffer at its
    /// capacity.
    #[must_use]
    pub fn held_bytes(&self) -> usize {
        let caller = match &self.caller {
            Some(Caller::Unknown(s)) => s.capacity(),
            _ => 0,
        };
        size_of::<Self>()
            + self.text.capacity()
            + self.fields.capacity() * size_of::<Field>()
            + self
                .fields
                .iter()
                .map(|f| f.key.capacity() + f.value.capacity())
                .sum::<usize>()
            + self.release.as_ref().map_or(0, String::capacity)
            + caller
            + self.header_extra.capacity() * size_of::<String>()
            + self
                .header_extra
                .iter()
                .map(String::capacity)
                .sum::<usize>()
            + self.sysdata.taskname.as_ref().map_or(0, Vec::capacity)
            + self.sysdata.release.as_ref().map_or(0, String::capacity)
    }

    /// Bytes of content: the text and every field's key and value, as the bound on a
    /// continuation chain counts them.
    #[must_use]
    pub fn content_len(&self) -> usize {
        self.text.len()
            + self
                .fields
                .iter()
                .map(|f| f.key.len() + f.value.len())
                .sum::<usize>()
    }

    /// The value of the first field named `key`.
    #[must_use]
    pub fn field(&self, key: &[u8]) -> Option<&[u8]> {
        self.fields
            .iter()
            .find(|f| f.key == key)
            .map(|f| f.value.as_slice())
    }
}

#[cfg(test)]
impl Record {
    /// A complete extended `kern.info` record from 10.77.0.10:6665 (seq 377, kernel time
    /// 4.373204 s, received 2026-11-27T21:53:56.123456Z): the one fixture the sink tests start
    /// from, changing what they test with struct update syntax.
    #[must_use]
    pub(crate) fn example(text: &[u8]) -> Self {
        Self {
            received: DateTime::from_timestamp_micros(1_795_817_636_123_456).unwrap_or_default(),
            sender: SocketAddr::from(([10, 77, 0, 10], 6665)),
            ifindex: 2,
            format: RecordFormat::Extended,
            priority: Priority::from_pri(6),
            seq: Some(377),
            timestamp_us: Some(4_373_204),
            kernel_time: None,
            release: None,
            caller: None,
            cont: ContFlag::None,
            header_extra: Vec::new(),
            text: text.to_vec(),
            fields: Vec::new(),
            sysdata: Sysdata::default(),
            flags: Flags::default(),
        }
    }
}

/// Displays bytes with control characters, `\` and invalid UTF-8 escaped.
#[derive(Debug, Clone, Copy)]
pub struct Escaped<'a>(pub &'a [u8]);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::with_capacity(self.0.len());
        escape_into(self.0, &mut s);
        f.write_str(&s)
    }
}

/// Which counter a loss was seen in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LossKind {
    /// A gap in the printk sequence number: lost datagrams, or records the sender did not send
    /// (console loglevel filtering, printk rate limiting).
    Seq,
    /// A gap in sysdata `msgid`, the per-target counter: datagrams lost on the way.
    Msgid,
}

/// Records that never arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lost {
    /// Capture time of the datagram that revealed the gap.
    pub received: DateTime<Utc>,
    /// Sender address and port.
    pub sender: SocketAddr,
    /// Interface the revealing datagram arrived on.
    pub ifindex: u32,
    /// Which counter has the gap.
    pub kind: LossKind,
    /// First missing value.
    pub first: u64,
    /// Last missing value (inclusive).
    pub last: u64,
    /// How many are missing.
    pub count: u64,
}

/// The sender's sequence (or kernel clock) started over: it rebooted, or another kernel now
/// sends from its address and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rebooted {
    /// Capture time of the first datagram of the new boot.
    pub received: DateTime<Utc>,
    /// Sender address and port.
    pub sender: SocketAddr,
    /// Interface it arrived on.
    pub ifindex: u32,
    /// Highest sequence number of the previous boot (extended mode).
    pub previous_seq: Option<u64>,
    /// Sequence number that started the new boot (extended mode).
    pub seq: Option<u64>,
    /// Latest kernel timestamp of the previous boot, microseconds.
    pub previous_timestamp_us: Option<u64>,
    /// Kernel timestamp that started the new boot, microseconds.
    pub timestamp_us: Option<u64>,
}

/// A datagram already heard (same frame on two interfaces, or twice on a mirror port): dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Duplicate {
    /// Capture time of the copy.
    pub received: DateTime<Utc>,
    /// Sender address and port.
    pub sender: SocketAddr,
    /// Interface the copy arrived on.
    pub ifindex: u32,
    /// Payload length, bytes.
    pub len: usize,
}

/// A payload that looked like netconsole's extended format but did not parse, or a fragment
/// that cannot be placed. Kept, with the payload, so that nothing is lost silently.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed {
    /// Capture time.
    pub received: DateTime<Utc>,
    /// Sender address and port.
    pub sender: SocketAddr,
    /// Interface it arrived on.
    pub ifindex: u32,
    /// What is wrong with it.
    pub error: DecodeError,
    /// The payload as received.
    pub payload: Vec<u8>,
}

/// What the decoder emits.
#[derive(Debug, Clone, PartialEq, Eq)]
#[expect(
    clippy::large_enum_variant,
    reason = "records are nearly every event; boxing them would cost an allocation per record"
)]
pub enum Event {
    /// A decoded record.
    Record(Record),
    /// A gap in the sender's sequence numbers or msgids.
    Lost(Lost),
    /// The sender rebooted.
    Rebooted(Rebooted),
    /// A copy of a datagram already heard, dropped.
    Duplicate(Duplicate),
    /// A payload that could not be decoded.
    Malformed(Malformed),
}

impl Event {
    /// The record, if this is one.
    #[must_use]
    pub fn as_record(&self) -> Option<&Record> {
        match self {
            Self::Record(r) => Some(r),
            _ => None,
        }
    }

    /// The sender the event is about.
    #[must_use]
    pub fn sender(&self) -> SocketAddr {
        match self {
            Self::Record(r) => r.sender,
            Self::Lost(l) => l.sender,
            Self::Rebooted(r) => r.sender,
            Self::Duplicate(d) => d.sender,
            Self::Malformed(m) => m.sender,
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::Record;

    proptest! {
        /// `lines` gives what `split(b'\n')` gives, empty lines and an empty text included.
        #[test]
        fn lines_are_the_split_at_newlines(text in proptest::collection::vec(
            prop_oneof![Just(b'\n'), Just(b'a'), any::<u8>()], 0..80)) {
            let record = Record::example(&text);
            let ours: Vec<&[u8]> = record.lines().collect();
            let split: Vec<&[u8]> = text.split(|&b| b == b'\n').collect();
            prop_assert_eq!(ours, split);
        }
    }
}
