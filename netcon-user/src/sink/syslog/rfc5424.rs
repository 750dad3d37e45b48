//! RFC 5424 messages for records and notices (see the module documentation of
//! [`super`] for the choices and why), and RFC 6587 octet-counting framing.

use std::fmt::{self, Write as _};
use std::net::SocketAddr;

use chrono::{DateTime, Datelike as _, Utc};

use crate::netconsole::{Event, LossKind, Lost, Malformed, Priority, Rebooted, Record};
use crate::notice::{HookOutcome, Notice};

/// Largest message, header included: 8192 bytes, rsyslog's default `maxMessageSize`; longer MSGs
/// are cut (at a character boundary) and marked `truncated="ORIGINAL_BYTES"`. Kernel records are
/// far shorter (`LOG_LINE_MAX`, 1 KiB less a prefix, `kernel/printk/printk.c`); this bounds
/// malformed payloads.
pub const MAX_MESSAGE_BYTES: usize = 8192;
/// The SD-ID of netcon's structured data element (see the module documentation).
pub const SD_ID: &str = "netcon@32473";
/// The SD-ID of the element that carries the record's `KEY=value` fields.
pub const FIELDS_SD_ID: &str = "fields@32473";
/// Bytes of `KEY=value` fields put into one message's structured data at most: 4 KiB (netconsole
/// userdata is at most a few hundred bytes; this bounds what a forged datagram can make of a
/// message, which stays under [`MAX_MESSAGE_BYTES`]).
pub const MAX_FIELDS_BYTES: usize = 4096;
/// Longest SD-NAME (RFC 5424 §6.3.3).
const MAX_SD_NAME: usize = 32;
/// APP-NAME of forwarded records.
pub const APP_NAME: &str = "kernel";
/// APP-NAME of netcon's own messages about a sender (loss, reboot, malformed datagrams).
pub const OWN_APP_NAME: &str = "netcon";

/// PRI of plain-mode records, which carry none: `kern.notice` (see the module documentation).
const PLAIN_PRIORITY: Priority = Priority {
    facility: 0,
    level: 5,
};
/// Syslog facility `user`, for records whose facility RFC 5424 cannot express.
const FACILITY_USER: u8 = 1;
/// Syslog facility `daemon`, for netcon's own messages.
const FACILITY_DAEMON: u8 = 3;
/// The largest facility RFC 5424 knows (`local7`).
const FACILITY_MAX: u8 = 23;
/// Syslog level `warning`: losses and malformed datagrams.
const LEVEL_WARNING: u8 = 4;
/// Syslog level `notice`: reboots.
const LEVEL_NOTICE: u8 = 5;

// ---------------------------------------------------------------------------------------------
// Formatting
// ---------------------------------------------------------------------------------------------

/// The RFC 5424 message for `event` (without transport framing), or `None` for events that are
/// not forwarded (duplicates).
#[must_use]
pub fn format_event(event: &Event) -> Option<String> {
    let mut m = Message::default();
    match event {
        Event::Record(r) => record_message(r, &mut m),
        Event::Lost(l) => lost_message(l, &mut m),
        Event::Rebooted(r) => rebooted_message(r, &mut m),
        Event::Malformed(x) => malformed_message(x, &mut m),
        Event::Duplicate(_) => return None,
    }
    Some(m.finish())
}

/// The RFC 5424 message for one of netcon-sniff's own notices: APP-NAME `netcon`, facility
/// `daemon`, level warning; MSGID `capture_lost` (HOSTNAME `-`: the lost frames' senders are
/// unknown), `forward_lost` (HOSTNAME `-`) or `hook` (HOSTNAME the sender whose panic it was).
#[must_use]
pub fn format_notice(notice: &Notice) -> String {
    match notice {
        Notice::CaptureLost(lost) => {
            let mut m = collector_message(lost.noticed, "capture_lost");
            m.param("interface", &lost.interface);
            m.param("reason", lost.reason.as_str());
            m.param("frames", lost.frames);
            if let Some(sender) = lost.sender {
                m.param("sender", sender);
            }
            let _ = write!(m.msg, "capture lost {} frames", lost.frames);
            if let Some(sender) = lost.sender {
                let _ = write!(m.msg, " from {sender}");
            }
            let _ = write!(m.msg, " on {} ({})", lost.interface, lost.reason.describe());
            m.finish()
        }
        Notice::ForwardLost(lost) => {
            let mut m = collector_message(lost.noticed, "forward_lost");
            m.param("url", &lost.url);
            m.param("messages", lost.messages);
            let _ = write!(
                m.msg,
                "forwarding lost {} messages ({})",
                lost.messages, lost.url
            );
            m.finish()
        }
        Notice::Hook(hook) => {
            let mut m = own_message(hook.at, hook.sender, LEVEL_WARNING, "hook");
            let (action, (name, value), what) = match hook.outcome {
                HookOutcome::Skipped(why) => (
                    "skipped",
                    ("reason", why.as_str().to_owned()),
                    format!("skipped ({})", why.describe()),
                ),
                HookOutcome::Late { waited } => (
                    "late",
                    ("waited_ms", waited.as_millis().to_string()),
                    format!("late (waited {:.3} s for a slot)", waited.as_secs_f64()),
                ),
                HookOutcome::TimedOut { after } => (
                    "timeout",
                    ("after_s", after.as_secs().to_string()),
                    format!("timed out after {} s; killed", after.as_secs()),
                ),
            };
            m.param("action", action);
            m.param(name, value);
            let _ = write!(m.msg, "panic hook {what}");
            m.finish()
        }
    }
}

/// A message about the collector itself (HOSTNAME `-`), level warning.
fn collector_message(time: DateTime<Utc>, msgid: &'static str) -> Message {
    Message {
        pri: u16::from(FACILITY_DAEMON) * 8 + u16::from(LEVEL_WARNING),
        time: Some(time),
        host: "-".to_owned(),
        app: OWN_APP_NAME,
        msgid,
        params: Vec::new(),
        fields: Vec::new(),
        msg: String::new(),
    }
}

/// Appends the RFC 6587 octet-counting frame of `message` (`LEN SP MSG`) to `out`.
pub fn frame_octet_counted(message: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(message.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(message);
}

/// A message being built: header fields, SD params, MSG.
#[derive(Default)]
struct Message {
    pri: u16,
    time: Option<DateTime<Utc>>,
    host: String,
    app: &'static str,
    msgid: &'static str,
    params: Vec<(&'static str, String)>,
    /// The record's `KEY=value` fields, names already valid SD-NAMEs.
    fields: Vec<(String, String)>,
    msg: String,
}

impl Message {
    fn param(&mut self, name: &'static str, value: impl fmt::Display) {
        self.params.push((name, value.to_string()));
    }

    /// `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID SD [SP MSG]`, at most
    /// [`MAX_MESSAGE_BYTES`] long.
    fn finish(mut self) -> String {
        let mut out = String::with_capacity(128 + self.msg.len());
        let _ = write!(out, "<{}>1 ", self.pri);
        // RFC 5424 wants a four-digit year; a wild kernel clock estimate gets NILVALUE.
        match self.time.filter(|t| (0..=9999).contains(&t.year())) {
            Some(t) => {
                let _ = write!(out, "{}", t.format("%Y-%m-%dT%H:%M:%S%.6fZ"));
            }
            None => out.push('-'),
        }
        let _ = write!(out, " {} {} - {} ", self.host, self.app, self.msgid);
        let head = out.len();
        write_sd(&self.params, &self.fields, &mut out);
        if !self.msg.is_empty() && out.len() + 1 + self.msg.len() > MAX_MESSAGE_BYTES {
            let original = self.msg.len();
            self.params.push(("truncated", original.to_string()));
            out.truncate(head);
            write_sd(&self.params, &self.fields, &mut out);
            let room = MAX_MESSAGE_BYTES.saturating_sub(out.len() + 1);
            self.msg.truncate(self.msg.floor_char_boundary(room));
        }
        if !self.msg.is_empty() {
            out.push(' ');
            out.push_str(&self.msg);
        }
        out
    }
}

/// `[netcon@32473 name="value" ...]`, then `[fields@32473 ...]` when there are fields.
fn write_sd(params: &[(&'static str, String)], fields: &[(String, String)], out: &mut String) {
    write_sd_element(SD_ID, params.iter().map(|(n, v)| (*n, v.as_str())), out);
    if !fields.is_empty() {
        write_sd_element(
            FIELDS_SD_ID,
            fields.iter().map(|(n, v)| (n.as_str(), v.as_str())),
            out,
        );
    }
}

/// `[SD-ID name="value" ...]`; names must already be valid SD-NAMEs, values are escaped by
/// [`escape_sd_value`].
fn write_sd_element<'a>(
    id: &str,
    params: impl Iterator<Item = (&'a str, &'a str)>,
    out: &mut String,
) {
    out.push('[');
    out.push_str(id);
    for (name, value) in params {
        out.push(' ');
        out.push_str(name);
        out.push_str("=\"");
        escape_sd_value(value, out);
        out.push('"');
    }
    out.push(']');
}

/// A PARAM-VALUE, the one place SD values are escaped: `"`, `\` and `]` with a backslash (RFC
/// 5424 §6.3.3), and control characters (NUL, ESC, CR, LF, C1) and invisible ones (bidi
/// overrides, zero-width) shown as the text output shows them (`\r`, `\u{1b}`): a value such as
/// `caller` or a userdata field comes off the network, and a raw NUL or CR would cut or forge the
/// line in a receiver's file.
fn escape_sd_value(value: &str, out: &mut String) {
    for c in value.chars() {
        match c {
            '"' | '\\' | ']' => {
                out.push('\\');
                out.push(c);
            }
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() || crate::escape::is_invisible(c) => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
}

/// `key` as an SD-NAME: printable US-ASCII except `=`, space, `]` and `"` (others become `_`),
/// at most 32 characters, never empty.
fn sd_name(key: &[u8]) -> String {
    let mut name: String = key
        .iter()
        .take(MAX_SD_NAME)
        .map(|&b| match b {
            b'=' | b' ' | b']' | b'"' => '_',
            33..=126 => char::from(b),
            _ => '_',
        })
        .collect();
    if name.is_empty() {
        name.push('_');
    }
    name
}

/// Puts the record's typed sysdata and release into the netcon element, its other fields into
/// the fields element (see the module documentation).
fn record_fields(r: &Record, m: &mut Message) {
    if let Some(release) = &r.release {
        m.param("release", release);
    }
    if let Some(cpu) = r.sysdata.cpu {
        m.param("cpu", cpu);
    }
    if let Some(taskname) = &r.sysdata.taskname {
        let mut value = String::new();
        escape_msg_into(taskname, &mut value);
        m.param("taskname", value);
    }
    if let Some(msgid) = r.sysdata.msgid {
        m.param("msgid", msgid);
    }
    let typed = |key: &[u8]| match key {
        b"cpu" => r.sysdata.cpu.is_some(),
        b"taskname" => r.sysdata.taskname.is_some(),
        b"msgid" => r.sysdata.msgid.is_some(),
        b"release" => r.release.is_some(),
        _ => false,
    };
    let mut bytes = 0;
    let mut dropped = 0u64;
    for field in r.fields.iter().filter(|f| !typed(&f.key)) {
        let name = sd_name(&field.key);
        let mut value = String::new();
        escape_msg_into(&field.value, &mut value);
        // Name, `="`, `"` and a space, and the value as `escape_sd_value` writes it: at worst
        // three times as long (a three-byte invisible character becomes `\u{202e}`).
        let cost = name.len() + 4 + 3 * value.len();
        if bytes + cost > MAX_FIELDS_BYTES {
            dropped += 1;
            continue;
        }
        bytes += cost;
        m.fields.push((name, value));
    }
    if dropped > 0 {
        m.param("fields_dropped", dropped);
    }
}

/// MSG text: UTF-8 with invalid bytes and control characters other than LF and TAB escaped the
/// way [`crate::sink::escape`] does; `\` is kept (see the module documentation).
fn escape_msg_into(bytes: &[u8], out: &mut String) {
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\n' | '\t' => out.push(c),
                '\r' => out.push_str("\\r"),
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

/// The HOSTNAME for a sender: its address (an IPv4-mapped IPv6 address as IPv4).
fn hostname(sender: SocketAddr) -> String {
    sender.ip().to_canonical().to_string()
}

/// Microseconds as `seconds.micros`, the way `dmesg` prints kernel time.
fn seconds(us: u64) -> String {
    format!("{}.{:06}", us / 1_000_000, us % 1_000_000)
}

fn record_message(r: &Record, m: &mut Message) {
    let priority = r.priority.unwrap_or(PLAIN_PRIORITY);
    let facility = if priority.facility > FACILITY_MAX {
        FACILITY_USER
    } else {
        priority.facility
    };
    m.pri = u16::from(facility) * 8 + u16::from(priority.level & 7);
    m.time = r.kernel_time.or(Some(r.received));
    if m.time.is_some_and(|t| !(0..=9999).contains(&t.year())) {
        m.time = Some(r.received);
    }
    m.host = hostname(r.sender);
    m.app = APP_NAME;
    m.msgid = "-";
    if let Some(seq) = r.seq {
        m.param("seq", seq);
    }
    if let Some(us) = r.timestamp_us {
        m.param("ktime", seconds(us));
    }
    m.param("sender", r.sender);
    if let Some(caller) = &r.caller {
        m.param("caller", caller);
    }
    if priority.facility > FACILITY_MAX {
        m.param("facility", priority.facility);
    }
    if let Some(mark) = r.flags.panic {
        m.param("panic", mark.kind.as_str());
    }
    if r.flags.partial {
        m.param("partial", 1);
    }
    if let Some(incomplete) = r.flags.incomplete {
        m.param("incomplete", incomplete.missing_bytes);
    }
    record_fields(r, m);
    escape_msg_into(&r.text, &mut m.msg);
}

fn own_message(
    received: DateTime<Utc>,
    sender: SocketAddr,
    level: u8,
    msgid: &'static str,
) -> Message {
    Message {
        pri: u16::from(FACILITY_DAEMON) * 8 + u16::from(level),
        time: Some(received),
        host: hostname(sender),
        app: OWN_APP_NAME,
        msgid,
        params: vec![("sender", sender.to_string())],
        fields: Vec::new(),
        msg: String::new(),
    }
}

fn lost_message(l: &Lost, m: &mut Message) {
    *m = own_message(l.received, l.sender, LEVEL_WARNING, "lost");
    let (what, counter) = match l.kind {
        LossKind::Seq => ("records", "seq"),
        LossKind::Msgid => ("messages", "msgid"),
    };
    m.param("kind", counter);
    m.param("first", l.first);
    m.param("last", l.last);
    m.param("count", l.count);
    let _ = write!(m.msg, "lost {} {what} ({counter} {}", l.count, l.first);
    if l.last != l.first {
        let _ = write!(m.msg, "..{}", l.last);
    }
    m.msg.push(')');
}

fn rebooted_message(r: &Rebooted, m: &mut Message) {
    *m = own_message(r.received, r.sender, LEVEL_NOTICE, "reboot");
    if let Some(seq) = r.previous_seq {
        m.param("previous_seq", seq);
    }
    if let Some(seq) = r.seq {
        m.param("seq", seq);
    }
    if let Some(us) = r.previous_timestamp_us {
        m.param("previous_ktime", seconds(us));
    }
    if let Some(us) = r.timestamp_us {
        m.param("ktime", seconds(us));
    }
    m.msg.push_str("sender rebooted");
}

fn malformed_message(x: &Malformed, m: &mut Message) {
    *m = own_message(x.received, x.sender, LEVEL_WARNING, "malformed");
    m.param("error", &x.error);
    escape_msg_into(&x.payload, &mut m.msg);
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use super::super::tests::{at, format_record, record, sender};
    use super::*;
    use crate::netconsole::{
        Caller, DecodeError, Duplicate, ExtendedError, PanicKind, PanicMark, RecordFormat,
    };

    #[test]
    fn record_is_rfc5424_byte_for_byte() {
        assert_eq!(
            format_record(record(b"NCT-202a75 SHORT hello")),
            "<14>1 2026-11-27T22:15:54.753542Z 10.77.0.10 kernel - - \
             [netcon@32473 seq=\"377\" ktime=\"4.373204\" sender=\"10.77.0.10:6665\"] \
             NCT-202a75 SHORT hello"
        );
    }

    fn field(key: &[u8], value: &[u8]) -> crate::netconsole::Field {
        crate::netconsole::Field {
            key: key.to_vec(),
            value: value.to_vec(),
        }
    }

    #[test]
    fn fields_go_into_a_second_element_and_sysdata_under_its_own_names() {
        let mut r = record(b"link up");
        r.fields = vec![
            field(b"SUBSYSTEM", b"net"),
            field(b"dc", b"lab-7"),
            field(b"rack", b"r12"),
            field(b"cpu", b"3"),
            field(b"taskname", b"kworker/3:1"),
            field(b"release", b"7.2.0-nct"),
            field(b"msgid", b"41"),
        ];
        r.sysdata = crate::netconsole::Sysdata::from_fields(&r.fields);
        r.release = Some("7.2.0-nct".into());
        assert_eq!(
            format_record(r),
            "<14>1 2026-11-27T22:15:54.753542Z 10.77.0.10 kernel - - \
             [netcon@32473 seq=\"377\" ktime=\"4.373204\" sender=\"10.77.0.10:6665\" \
             release=\"7.2.0-nct\" cpu=\"3\" taskname=\"kworker/3:1\" msgid=\"41\"]\
             [fields@32473 SUBSYSTEM=\"net\" dc=\"lab-7\" rack=\"r12\"] link up"
        );
    }

    #[test]
    fn field_names_become_sd_names_and_values_are_escaped() {
        let mut r = record(b"x");
        r.fields = vec![
            field(b"a b=c]d\"e\xff", b"q\"b\\s]e\xfe"),
            field(b"", b"no key"),
            field(&[b'k'; 40], b"long"),
            field(b"ok", b""),
        ];
        let m = format_record(r);
        let long = "k".repeat(32);
        assert!(
            m.ends_with(&format!(
                "[fields@32473 a_b_c_d_e_=\"q\\\"b\\\\s\\]e\\\\xfe\" _=\"no key\" \
                 {long}=\"long\" ok=\"\"] x"
            )),
            "{m}"
        );
    }

    #[test]
    fn field_values_escape_controls_and_invisibles_too() {
        let mut r = record(b"x");
        r.fields = vec![field(
            b"dc",
            "a\rb\nc\td\u{1b}[31m]\u{202e}e\u{200b}".as_bytes(),
        )];
        let m = format_record(r);
        // One escaper for every SD value: no raw control or invisible character reaches the
        // receiver, and RFC 5424's specials are escaped.
        assert!(
            !m.chars()
                .any(|c| (c.is_control() && c != '\n') || crate::sink::escape::is_invisible(c)),
            "{m:?}"
        );
        assert!(
            m.contains(r#"[fields@32473 dc="a\\rb\nc\td\\u{1b}[31m\]\u{202e}e\u{200b}"]"#),
            "{m}"
        );
    }

    #[test]
    fn fields_beyond_the_bound_are_counted_not_sent() {
        let mut r = record(b"x");
        r.fields = (0..100)
            .map(|i| field(format!("k{i}").as_bytes(), &[b'v'; 100]))
            .collect();
        let m = format_record(r);
        assert!(m.len() <= MAX_MESSAGE_BYTES, "{}", m.len());
        let kept = m.matches("=\"vvvv").count();
        assert!(kept > 10 && kept < 100, "{kept}");
        assert!(
            m.contains(&format!(" fields_dropped=\"{}\"]", 100 - kept)),
            "{m}"
        );
    }

    #[test]
    fn pri_is_facility_times_eight_plus_level() {
        for (pri, expected) in [
            (0, "<0>"),
            (6, "<6>"),
            (15, "<15>"),
            (30, "<30>"),
            (191, "<191>"),
        ] {
            let mut r = record(b"x");
            r.priority = Priority::from_pri(pri);
            assert!(
                format_record(r).starts_with(&format!("{expected}1 ")),
                "{pri}"
            );
        }
    }

    #[test]
    fn plain_records_are_kern_notice_at_receive_time() {
        let mut r = record(b"plain line");
        r.format = RecordFormat::Plain;
        r.priority = None;
        r.seq = None;
        r.timestamp_us = None;
        r.kernel_time = None;
        assert_eq!(
            format_record(r),
            "<5>1 2026-11-27T22:15:54.738593Z 10.77.0.10 kernel - - \
             [netcon@32473 sender=\"10.77.0.10:6665\"] plain line"
        );
    }

    #[test]
    fn facility_beyond_local7_goes_as_user_with_the_real_one_in_sd() {
        let mut r = record(b"x");
        r.priority = Some(Priority {
            facility: 125,
            level: 3,
        });
        let m = format_record(r);
        assert!(m.starts_with("<11>1 "), "{m}");
        assert!(m.contains(" facility=\"125\"]"), "{m}");
    }

    #[test]
    fn wild_kernel_time_falls_back_to_receive_time() {
        let mut r = record(b"x");
        r.kernel_time = DateTime::from_timestamp(300_000_000_000, 0);
        assert!(format_record(r).starts_with("<14>1 2026-11-27T22:15:54.738593Z "));
        let mut r = record(b"x");
        r.kernel_time = None;
        r.received = DateTime::from_timestamp(300_000_000_000, 0).unwrap_or_default();
        assert!(format_record(r).starts_with("<14>1 - 10.77.0.10 "));
    }

    #[test]
    fn sd_values_escape_quote_backslash_and_bracket() {
        let mut r = record(b"x");
        r.caller = Some(Caller::Unknown("a\"b\\c]d".into()));
        r.sender = SocketAddr::new(IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1)), 6665);
        assert_eq!(
            format_record(r),
            "<14>1 2026-11-27T22:15:54.753542Z fe80::1 kernel - - \
             [netcon@32473 seq=\"377\" ktime=\"4.373204\" sender=\"[fe80::1\\]:6665\" \
             caller=\"a\\\"b\\\\c\\]d\"] x"
        );
    }

    #[test]
    fn sd_values_escape_controls_and_invisible_characters() {
        let mut r = record(b"x");
        r.caller = Some(Caller::Unknown(
            "a\0b\x1b[31mc\rd\ne\u{9b}f\u{202e}g".into(),
        ));
        let message = format_record(r);
        assert!(
            message.contains(r#"caller="a\u{0}b\u{1b}[31mc\rd\ne\u{9b}f\u{202e}g"]"#),
            "{message}"
        );
        assert!(!message.chars().any(char::is_control), "{message:?}");
    }

    #[test]
    fn notices_are_netcon_messages() {
        use crate::notice::{CaptureLost, HookNotice, LossReason, SkipReason};
        let at = DateTime::from_timestamp(1_764_280_436, 0).unwrap_or_default();
        let lost = format_notice(&Notice::CaptureLost(CaptureLost {
            noticed: at,
            interface: "eth1".into(),
            reason: LossReason::Socket,
            frames: 12,
            sender: None,
        }));
        assert_eq!(
            lost,
            "<28>1 2025-11-27T21:53:56.000000Z - netcon - capture_lost \
             [netcon@32473 interface=\"eth1\" reason=\"socket\" frames=\"12\"] \
             capture lost 12 frames on eth1 (socket buffer full)"
        );
        let hook = format_notice(&Notice::Hook(HookNotice {
            at,
            sender: "10.77.0.10:6665".parse().unwrap(),
            outcome: HookOutcome::Skipped(SkipReason::QueueFull),
        }));
        assert!(
            hook.starts_with("<28>1 2025-11-27T21:53:56.000000Z 10.77.0.10 netcon - hook "),
            "{hook}"
        );
        assert!(
            hook.contains(r#"action="skipped" reason="queue_full""#),
            "{hook}"
        );
        let forward = format_notice(&Notice::ForwardLost(crate::notice::ForwardLost {
            noticed: at,
            url: "nats://10.1.0.5:4222/netcon".into(),
            messages: 7,
            first_dropped: at,
        }));
        assert_eq!(
            forward,
            "<28>1 2025-11-27T21:53:56.000000Z - netcon - forward_lost \
             [netcon@32473 url=\"nats://10.1.0.5:4222/netcon\" messages=\"7\"] \
             forwarding lost 7 messages (nats://10.1.0.5:4222/netcon)"
        );
    }

    #[test]
    fn ipv4_mapped_sender_is_named_as_ipv4() {
        let mut r = record(b"x");
        r.sender = SocketAddr::new(IpAddr::V6(Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped()), 1);
        assert!(format_record(r).contains("Z 10.0.0.1 kernel "));
    }

    #[test]
    fn msg_keeps_utf8_lf_tab_backslash_and_escapes_the_rest() {
        let m = format_record(record(b"h\xc3\xa9 \\ a\tb\nline2\r\x1b[31m\xff\x00"));
        assert!(
            m.ends_with("] hé \\ a\tb\nline2\\r\\u{1b}[31m\\xff\\u{0}"),
            "{m:?}"
        );
    }

    #[test]
    fn empty_text_has_no_msg() {
        assert!(format_record(record(b"")).ends_with("sender=\"10.77.0.10:6665\"]"));
    }

    #[test]
    fn flags_appear_in_sd() {
        let mut r = record(b"Oops: 0000");
        r.caller = Some(Caller::Task(42));
        r.flags.partial = true;
        r.flags.panic = Some(PanicMark {
            event: 1,
            kind: PanicKind::Oops,
            begins: true,
        });
        r.flags.incomplete = Some(crate::netconsole::Incomplete {
            missing_bytes: 10,
            total_bytes: 100,
        });
        let m = format_record(r);
        assert!(
            m.contains(
                " caller=\"T42\" panic=\"oops\" partial=\"1\" incomplete=\"10\"] Oops: 0000"
            ),
            "{m}"
        );
    }

    #[test]
    fn long_text_is_cut_at_a_character_boundary_and_marked() {
        let text = "é".repeat(MAX_MESSAGE_BYTES);
        let m = format_record(record(text.as_bytes()));
        assert!(m.len() <= MAX_MESSAGE_BYTES, "{}", m.len());
        assert!(m.len() > MAX_MESSAGE_BYTES - 2, "{}", m.len());
        assert!(m.contains(&format!(" truncated=\"{}\"] éé", 2 * MAX_MESSAGE_BYTES)));
        // Exactly at the limit: not cut.
        let head = format_record(record(b"")).len() + 1;
        let fits = "x".repeat(MAX_MESSAGE_BYTES - head);
        let m = format_record(record(fits.as_bytes()));
        assert_eq!(m.len(), MAX_MESSAGE_BYTES);
        assert!(!m.contains("truncated"));
    }

    #[test]
    fn loss_reboot_and_malformed_are_netcon_messages_about_the_sender() {
        let lost = Event::Lost(Lost {
            received: at(),
            sender: sender(),
            ifindex: 2,
            kind: LossKind::Seq,
            first: 10,
            last: 12,
            count: 3,
        });
        assert_eq!(
            format_event(&lost).as_deref(),
            Some(
                "<28>1 2026-11-27T22:15:54.738593Z 10.77.0.10 netcon - lost \
                 [netcon@32473 sender=\"10.77.0.10:6665\" kind=\"seq\" first=\"10\" last=\"12\" \
                 count=\"3\"] lost 3 records (seq 10..12)"
            )
        );
        let rebooted = Event::Rebooted(Rebooted {
            received: at(),
            sender: sender(),
            ifindex: 2,
            previous_seq: Some(900),
            seq: Some(0),
            previous_timestamp_us: Some(60_000_000),
            timestamp_us: Some(1),
        });
        assert_eq!(
            format_event(&rebooted).as_deref(),
            Some(
                "<29>1 2026-11-27T22:15:54.738593Z 10.77.0.10 netcon - reboot \
                 [netcon@32473 sender=\"10.77.0.10:6665\" previous_seq=\"900\" seq=\"0\" \
                 previous_ktime=\"60.000000\" ktime=\"0.000001\"] sender rebooted"
            )
        );
        let malformed = Event::Malformed(Malformed {
            received: at(),
            sender: sender(),
            ifindex: 2,
            error: DecodeError::Extended {
                source: ExtendedError::MissingSemicolon,
            },
            payload: b"6,1,2,-\x1b]0;x".to_vec(),
        });
        assert_eq!(
            format_event(&malformed).as_deref(),
            Some(
                "<28>1 2026-11-27T22:15:54.738593Z 10.77.0.10 netcon - malformed \
                 [netcon@32473 sender=\"10.77.0.10:6665\" \
                 error=\"bad extended header: no `;` closes the header\"] 6,1,2,-\\u{1b}]0;x"
            )
        );
        let duplicate = Event::Duplicate(Duplicate {
            received: at(),
            sender: sender(),
            ifindex: 2,
            len: 5,
        });
        assert_eq!(format_event(&duplicate), None);
    }

    #[test]
    fn octet_counting_frames_count_bytes() {
        let mut out = Vec::new();
        frame_octet_counted(b"<14>1 - - - - - - hello", &mut out);
        frame_octet_counted("é".as_bytes(), &mut out);
        frame_octet_counted(b"", &mut out);
        assert_eq!(out, b"23 <14>1 - - - - - - hello2 \xc3\xa90 ");
    }
}
