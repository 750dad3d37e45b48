//! `--format json`: one JSON object per line for each record and event, for log pipelines.
//!
//! The schema is documented in the README ("JSON output"). Times are RFC 3339 UTC with
//! microseconds. `text` is the record's text as UTF-8; when the bytes are not valid UTF-8 it is
//! the lossy view (U+FFFD for bad bytes) and `text_escaped` carries the lossless form
//! (`\xNN` for each bad byte, `\\` for a backslash). Duplicates print nothing: they are counted.

use std::{borrow::Cow, fmt::Write as _};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use super::escape::{self, escape_into};
use crate::netconsole::{Event, LossKind, Priority, Record};
use crate::notice::{HookOutcome, Notice};

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// `(utf8 view, lossless escaped form when the bytes are not valid UTF-8)`.
fn bytes_view(bytes: &[u8]) -> (Cow<'_, str>, Option<String>) {
    if let Ok(text) = std::str::from_utf8(bytes) {
        (Cow::Borrowed(text), None)
    } else {
        let mut escaped = String::with_capacity(bytes.len() + 8);
        lossless_escape(bytes, &mut escaped);
        (String::from_utf8_lossy(bytes), Some(escaped))
    }
}

/// Keeps every valid UTF-8 character (controls included: JSON escapes those itself), writes
/// `\\` for a backslash and `\xNN` for each byte that is not UTF-8, so the bytes can be rebuilt.
fn lossless_escape(bytes: &[u8], out: &mut String) {
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c == '\\' {
                out.push_str("\\\\");
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
}

#[derive(Serialize)]
struct FieldJson<'a> {
    key: Cow<'a, str>,
    value: Cow<'a, str>,
}

#[derive(Serialize)]
struct IncompleteJson {
    missing_bytes: usize,
    total_bytes: usize,
}

#[derive(Serialize)]
struct PanicJson {
    event: u64,
    kind: &'static str,
    begins: bool,
}

#[derive(Serialize)]
struct FlagsJson {
    fragmented: bool,
    incomplete: Option<IncompleteJson>,
    partial: bool,
    continued: bool,
    panic: Option<PanicJson>,
}

#[derive(Serialize)]
struct SysdataJson<'a> {
    cpu: Option<u32>,
    taskname: Option<Cow<'a, str>>,
    release: Option<&'a str>,
    msgid: Option<u32>,
}

#[derive(Serialize)]
struct RecordJson<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    received: String,
    sender: String,
    ifindex: u32,
    format: &'static str,
    facility: Option<&'static str>,
    level: Option<&'static str>,
    pri: Option<u16>,
    seq: Option<u64>,
    timestamp_us: Option<u64>,
    kernel_time: Option<String>,
    release: Option<&'a str>,
    caller: Option<String>,
    cont: String,
    text: Cow<'a, str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    text_escaped: Option<String>,
    fields: Vec<FieldJson<'a>>,
    sysdata: SysdataJson<'a>,
    flags: FlagsJson,
    header_extra: &'a [String],
}

fn record_json(r: &Record) -> RecordJson<'_> {
    let (text, text_escaped) = bytes_view(&r.text);
    RecordJson {
        kind: "record",
        received: time(r.received),
        sender: r.sender.to_string(),
        ifindex: r.ifindex,
        format: r.format.as_str(),
        facility: r.priority.and_then(Priority::facility_name),
        level: r.priority.map(Priority::level_name),
        pri: r.priority.map(Priority::pri),
        seq: r.seq,
        timestamp_us: r.timestamp_us,
        kernel_time: r.kernel_time.map(time),
        release: r.release.as_deref(),
        caller: r.caller.as_ref().map(ToString::to_string),
        cont: char::from(r.cont.as_byte()).to_string(),
        text,
        text_escaped,
        fields: r
            .fields
            .iter()
            .map(|f| FieldJson {
                key: String::from_utf8_lossy(&f.key),
                value: String::from_utf8_lossy(&f.value),
            })
            .collect(),
        sysdata: SysdataJson {
            cpu: r.sysdata.cpu,
            taskname: r.sysdata.taskname.as_deref().map(String::from_utf8_lossy),
            release: r.sysdata.release.as_deref(),
            msgid: r.sysdata.msgid,
        },
        flags: FlagsJson {
            fragmented: r.flags.fragmented,
            incomplete: r.flags.incomplete.map(|i| IncompleteJson {
                missing_bytes: i.missing_bytes,
                total_bytes: i.total_bytes,
            }),
            partial: r.flags.partial,
            continued: r.flags.continued,
            panic: r.flags.panic.map(|p| PanicJson {
                event: p.event,
                kind: p.kind.as_str(),
                begins: p.begins,
            }),
        },
        header_extra: &r.header_extra,
    }
}

#[derive(Serialize)]
struct LostJson {
    #[serde(rename = "type")]
    kind: &'static str,
    received: String,
    sender: String,
    ifindex: u32,
    counter: &'static str,
    first: u64,
    last: u64,
    count: u64,
}

#[derive(Serialize)]
struct RebootedJson {
    #[serde(rename = "type")]
    kind: &'static str,
    received: String,
    sender: String,
    ifindex: u32,
    previous_seq: Option<u64>,
    seq: Option<u64>,
    previous_timestamp_us: Option<u64>,
    timestamp_us: Option<u64>,
}

#[derive(Serialize)]
struct MalformedJson<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    received: String,
    sender: String,
    ifindex: u32,
    error: String,
    payload: Cow<'a, str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_escaped: Option<String>,
}

/// Appends the JSON line for `event` (none for a duplicate), ending in `\n`.
pub fn write_event(event: &Event, out: &mut String) {
    let written = match event {
        Event::Record(r) => serde_json::to_string(&record_json(r)),
        Event::Lost(l) => serde_json::to_string(&LostJson {
            kind: "lost",
            received: time(l.received),
            sender: l.sender.to_string(),
            ifindex: l.ifindex,
            counter: match l.kind {
                LossKind::Seq => "seq",
                LossKind::Msgid => "msgid",
            },
            first: l.first,
            last: l.last,
            count: l.count,
        }),
        Event::Rebooted(r) => serde_json::to_string(&RebootedJson {
            kind: "rebooted",
            received: time(r.received),
            sender: r.sender.to_string(),
            ifindex: r.ifindex,
            previous_seq: r.previous_seq,
            seq: r.seq,
            previous_timestamp_us: r.previous_timestamp_us,
            timestamp_us: r.timestamp_us,
        }),
        Event::Malformed(m) => {
            let (payload, payload_escaped) = bytes_view(&m.payload);
            serde_json::to_string(&MalformedJson {
                kind: "malformed",
                received: time(m.received),
                sender: m.sender.to_string(),
                ifindex: m.ifindex,
                error: m.error.to_string(),
                payload,
                payload_escaped,
            })
        }
        Event::Duplicate(_) => return,
    };
    push_line(written, out);
}

/// Appends the JSON line for one of netcon-sniff's own notices, ending in `\n`:
/// `{"type":"capture_lost","noticed":...,"interface":"eth1","reason":"ring_full","frames":N}`
/// (with `"sender":"10.1.0.5"` where the capture knows whose frames they were),
/// `{"type":"hook_skipped"|"hook_late"|"hook_timeout","at":...,"sender":...,...}`, or
/// `{"type":"forward_lost","noticed":...,"url":...,"messages":N,"first_dropped":...}`.
pub fn write_notice(notice: &Notice, out: &mut String) {
    let written = match notice {
        Notice::CaptureLost(lost) => serde_json::to_string(&CaptureLostJson {
            kind: "capture_lost",
            noticed: time(lost.noticed),
            interface: &lost.interface,
            reason: lost.reason.as_str(),
            frames: lost.frames,
            sender: lost.sender.map(|a| a.to_string()),
        }),
        Notice::Hook(hook) => {
            let (kind, reason, waited_ms, after_s) = match hook.outcome {
                HookOutcome::Skipped(why) => ("hook_skipped", Some(why.as_str()), None, None),
                HookOutcome::Late { waited } => (
                    "hook_late",
                    None,
                    Some(u64::try_from(waited.as_millis()).unwrap_or(u64::MAX)),
                    None,
                ),
                HookOutcome::TimedOut { after } => {
                    ("hook_timeout", None, None, Some(after.as_secs()))
                }
            };
            serde_json::to_string(&HookJson {
                kind,
                at: time(hook.at),
                sender: hook.sender.to_string(),
                reason,
                waited_ms,
                after_s,
            })
        }
        Notice::ForwardLost(lost) => serde_json::to_string(&ForwardLostJson {
            kind: "forward_lost",
            noticed: time(lost.noticed),
            url: &lost.url,
            messages: lost.messages,
            first_dropped: time(lost.first_dropped),
        }),
    };
    push_line(written, out);
}

#[derive(Serialize)]
struct CaptureLostJson<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    noticed: String,
    interface: &'a str,
    reason: &'static str,
    frames: u64,
    /// Only where the capture knows whose frames they were.
    #[serde(skip_serializing_if = "Option::is_none")]
    sender: Option<String>,
}

#[derive(Serialize)]
struct ForwardLostJson<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    noticed: String,
    url: &'a str,
    messages: u64,
    first_dropped: String,
}

#[derive(Serialize)]
struct HookJson {
    #[serde(rename = "type")]
    kind: &'static str,
    at: String,
    sender: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    waited_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    after_s: Option<u64>,
}

/// Appends `line` with DEL, the C1 controls, bidirectional overrides and zero-width characters
/// as `\uXXXX` escapes: `serde_json` escapes only C0, and the others can still drive a terminal
/// (8-bit CSI, U+009B) or make text read differently from what it is (U+202E) when a JSON line
/// is shown with `jq -r` or `less`. The escapes decode to the same characters: nothing is lost.
fn push_escaped_json(line: &str, out: &mut String) {
    let mut rest = line;
    while let Some((at, c)) = rest.char_indices().find(|&(_, c)| {
        c == '\u{7f}' || ('\u{80}'..='\u{9f}').contains(&c) || escape::is_invisible(c)
    }) {
        out.push_str(&rest[..at]);
        let _ = write!(out, "\\u{:04x}", u32::from(c));
        rest = &rest[at + c.len_utf8()..];
    }
    out.push_str(rest);
}

/// Appends a serialized line (see [`push_escaped_json`]) and its newline. Serializing these
/// plain structs cannot fail; should it, the stream says so rather than dropping the line.
fn push_line(written: serde_json::Result<String>, out: &mut String) {
    match written {
        Ok(line) => push_escaped_json(&line, out),
        Err(error) => {
            let mut message = String::new();
            escape_into(error.to_string().as_bytes(), &mut message);
            let _ = write!(out, "{{\"type\":\"error\",\"error\":\"{message}\"}}");
        }
    }
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netconsole::{Decoder, DecoderConfig, Incoming};

    fn decode(payloads: &[&[u8]]) -> Vec<serde_json::Value> {
        let events = crate::testing::decode_events(payloads);
        let mut out = String::new();
        for event in &events {
            write_event(event, &mut out);
        }
        out.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn extended_record_has_every_field() {
        let lines =
            decode(&[b"14,377,4373204,-,caller=T42;NCT h\\xc3\\xa9 raw[\\xff]\n SUBSYSTEM=pci\n"]);
        assert_eq!(lines.len(), 1, "{lines:?}");
        let r = &lines[0];
        assert_eq!(r["type"], "record");
        assert_eq!(r["received"], "2025-11-27T21:53:56.123456Z");
        assert_eq!(r["sender"], "10.77.0.10:6665");
        assert_eq!(r["ifindex"], 3);
        assert_eq!(r["format"], "extended");
        assert_eq!(r["facility"], "user");
        assert_eq!(r["level"], "info");
        assert_eq!(r["pri"], 14);
        assert_eq!(r["seq"], 377);
        assert_eq!(r["timestamp_us"], 4_373_204);
        assert_eq!(r["caller"], "T42");
        assert_eq!(r["text"], "NCT h\u{e9} raw[\u{fffd}]");
        assert_eq!(r["text_escaped"], "NCT h\u{e9} raw[\\xff]");
        assert_eq!(r["fields"][0]["key"], "SUBSYSTEM");
        assert_eq!(r["fields"][0]["value"], "pci");
        assert_eq!(r["flags"]["fragmented"], false);
        assert!(r["kernel_time"].is_string());
    }

    #[test]
    fn loss_is_its_own_object() {
        let lines = decode(&[b"6,1,10,-;a\n", b"6,5,20,-;b\n"]);
        let lost: Vec<_> = lines.iter().filter(|l| l["type"] == "lost").collect();
        assert_eq!(lost.len(), 1, "{lines:?}");
        assert_eq!(lost[0]["counter"], "seq");
        assert_eq!(
            (
                lost[0]["first"].as_u64(),
                lost[0]["last"].as_u64(),
                lost[0]["count"].as_u64()
            ),
            (Some(2), Some(4), Some(3))
        );
    }

    #[test]
    fn c1_del_and_bidi_become_json_escapes_that_decode_to_the_same_text() {
        let text = "a\u{7f}b\u{9b}2J\u{202e}gnp.exe\u{200b}\u{1b}[31m\u{e9}";
        let lines = decode(&[format!("6,1,10,-;{text}\n").as_bytes()]);
        assert_eq!(lines[0]["text"], text);
        let mut out = String::new();
        let mut events = Vec::new();
        let mut decoder = Decoder::new(DecoderConfig::default());
        decoder.push(
            std::time::Instant::now(),
            Incoming {
                received: DateTime::from_timestamp(0, 0).unwrap(),
                ifindex: 1,
                src: "10.77.0.10:6665".parse().unwrap(),
                payload: format!("6,1,10,-;{text}\n").as_bytes(),
            },
            &mut events,
        );
        write_event(&events[0], &mut out);
        assert!(
            out.contains(r"a\u007fb\u009b2J\u202egnp.exe\u200b\u001b[31mé"),
            "{out}"
        );
        assert!(!out.trim_end().chars().any(char::is_control), "{out:?}");
    }

    #[test]
    fn notices_are_json_objects() {
        use crate::notice::{CaptureLost, HookNotice, LossReason, SkipReason};
        let mut out = String::new();
        write_notice(
            &Notice::CaptureLost(CaptureLost {
                noticed: DateTime::from_timestamp(1_764_280_436, 0).unwrap(),
                interface: "eth1".into(),
                reason: LossReason::RingFull,
                frames: 15_631,
                sender: None,
            }),
            &mut out,
        );
        write_notice(
            &Notice::Hook(HookNotice {
                at: DateTime::from_timestamp(1_764_280_436, 0).unwrap(),
                sender: "10.77.0.10:6665".parse().unwrap(),
                outcome: HookOutcome::Skipped(SkipReason::QueueFull),
            }),
            &mut out,
        );
        let v: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(v[0]["type"], "capture_lost");
        assert_eq!(v[0]["frames"], 15_631);
        assert_eq!(v[0]["interface"], "eth1");
        assert_eq!(v[0]["reason"], "ring_full");
        assert_eq!(v[1]["type"], "hook_skipped");
        assert_eq!(v[1]["sender"], "10.77.0.10:6665");
        assert_eq!(v[1]["reason"], "queue_full");
        assert!(v[0].get("sender").is_none(), "{}", v[0]);
        out.clear();
        write_notice(
            &Notice::CaptureLost(CaptureLost {
                noticed: DateTime::from_timestamp(1_764_280_436, 0).unwrap(),
                interface: "eth1".into(),
                reason: LossReason::QueueFull,
                frames: 9000,
                sender: Some(crate::notice::SourcePrefix::of(
                    "fd00:1::7".parse().unwrap(),
                )),
            }),
            &mut out,
        );
        let v: serde_json::Value = serde_json::from_str(out.trim_end()).unwrap();
        assert_eq!(
            (&v["sender"], &v["reason"], &v["frames"]),
            (&"fd00:1::/64".into(), &"queue_full".into(), &9000.into())
        );
        out.clear();
        write_notice(
            &Notice::ForwardLost(crate::notice::ForwardLost {
                noticed: DateTime::from_timestamp(1_764_280_437, 0).unwrap(),
                url: "nats://10.1.0.5:4222/netcon".into(),
                messages: 120,
                first_dropped: DateTime::from_timestamp(1_764_280_436, 0).unwrap(),
            }),
            &mut out,
        );
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["type"], "forward_lost");
        assert_eq!(v["url"], "nats://10.1.0.5:4222/netcon");
        assert_eq!(v["messages"], 120);
        assert_eq!(v["first_dropped"], "2025-11-27T21:53:56.000000Z");
    }

    #[test]
    fn lossless_escape_round_trips_bad_bytes() {
        let mut out = String::new();
        lossless_escape(b"a\\b\xffc\tok", &mut out);
        assert_eq!(out, "a\\\\b\\xffc\tok");
        let (lossy, escaped) = bytes_view(b"x\xff");
        assert_eq!(lossy, "x\u{fffd}");
        assert_eq!(escaped.as_deref(), Some("x\\xff"));
        assert_eq!(bytes_view("héllo".as_bytes()).1, None);
    }
}
