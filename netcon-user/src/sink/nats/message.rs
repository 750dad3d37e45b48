//! What goes out: each event's and notice's subject, `Nats-Msg-Id` and payload, and the
//! messages as queued for the worker, their bytes charged to the memory budget.

use std::net::IpAddr;

use bytes::Bytes;

use crate::budget::MemoryBudget;
use crate::netconsole::{Event, LossKind, RecordFormat};
use crate::notice::{HookOutcome, Notice};

pub(super) const QUEUED_OVERHEAD: usize = 96;

/// The subject token for a sender: its address (IPv4-mapped IPv6 as IPv4) with `.` and `:` as
/// `_`, e.g. `10_77_0_10` or `fd00_1__10`.
#[must_use]
pub fn sender_token(ip: IpAddr) -> String {
    ip.to_canonical().to_string().replace(['.', ':'], "_")
}

/// `PREFIX.records.<sender>` for a record, `PREFIX.events.<sender>` for anything else.
#[must_use]
pub fn subject(prefix: &str, event: &Event) -> String {
    let kind = if event.as_record().is_some() {
        "records"
    } else {
        "events"
    };
    format!("{prefix}.{kind}.{}", sender_token(event.sender().ip()))
}

/// 64-bit FNV-1a: stable across builds and machines (std's hasher promises neither), which is
/// all two collectors need to agree on an id; collisions within one sender's duplicate window
/// are out of reach at 2^-64.
#[must_use]
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// The `Nats-Msg-Id` of `event`, from what the datagram(s) carried and nothing local (not the
/// receive time, not the interface), so that every collector computes the same one:
/// `SENDER/x/KTIME/SEQ` for an extended record, `SENDER/p/HASH` for a plain one (the text's
/// [`fnv1a`]), `SENDER/lost/...`, `SENDER/reboot/...` and `SENDER/malformed/HASH` for events.
#[must_use]
pub fn message_id(event: &Event) -> Option<String> {
    let sender = |s: std::net::SocketAddr| {
        std::net::SocketAddr::new(s.ip().to_canonical(), s.port()).to_string()
    };
    Some(match event {
        Event::Record(r) => match (r.format, r.seq) {
            (RecordFormat::Extended, Some(seq)) => format!(
                "{}/x/{}/{seq}",
                sender(r.sender),
                r.timestamp_us.unwrap_or_default()
            ),
            _ => format!("{}/p/{:016x}", sender(r.sender), fnv1a(&r.text)),
        },
        Event::Lost(l) => format!(
            "{}/lost/{}/{}-{}",
            sender(l.sender),
            match l.kind {
                LossKind::Seq => "seq",
                LossKind::Msgid => "msgid",
            },
            l.first,
            l.last
        ),
        Event::Rebooted(r) => format!(
            "{}/reboot/{}/{}/{}",
            sender(r.sender),
            r.previous_seq.unwrap_or_default(),
            r.seq.unwrap_or_default(),
            r.timestamp_us.unwrap_or_default()
        ),
        Event::Malformed(m) => {
            format!("{}/malformed/{:016x}", sender(m.sender), fnv1a(&m.payload))
        }
        Event::Duplicate(_) => return None,
    })
}

/// This machine's name (`/proc/sys/kernel/hostname`), for the collector's own events.
pub(super) fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// The subject of one of the collector's own notices: `PREFIX.events.<sender>` for a panic
/// hook's (it is about that sender's report, and `tail --sender` shows it), else
/// `PREFIX.collector.<host>` (frames lost before anyone knew their sender, messages a forwarder
/// dropped).
#[must_use]
pub fn notice_subject(prefix: &str, host: &str, notice: &Notice) -> String {
    match notice {
        Notice::Hook(hook) => format!("{prefix}.events.{}", sender_token(hook.sender.ip())),
        Notice::CaptureLost(_) | Notice::ForwardLost(_) => format!(
            "{prefix}.collector.{}",
            host.replace(['.', ':', ' ', '*', '>'], "_")
        ),
    }
}

/// The JSON `type` of a notice, for its id.
pub(super) fn notice_kind(notice: &Notice) -> &'static str {
    match notice {
        Notice::CaptureLost(_) => "capture_lost",
        Notice::ForwardLost(_) => "forward_lost",
        Notice::Hook(hook) => match hook.outcome {
            HookOutcome::Skipped(_) => "hook_skipped",
            HookOutcome::Late { .. } => "hook_late",
            HookOutcome::TimedOut { .. } => "hook_timeout",
        },
    }
}

/// The notice's `--format json` object with the collector's name added (`"collector":HOST`):
/// in the fleet, which collector noticed it is the point.
#[must_use]
pub fn notice_payload(notice: &Notice, host: &str) -> String {
    let mut line = String::new();
    crate::sink::json::write_notice(notice, &mut line);
    let object = line.trim_end();
    match object.strip_suffix('}') {
        Some(open) if open.starts_with('{') => {
            let host = serde_json::Value::from(host);
            format!("{open},\"collector\":{host}}}")
        }
        _ => object.to_owned(),
    }
}

/// One message waiting for the server. Its bytes stay charged to the budget until it is
/// dropped: sent, given up, or left behind at exit, wherever that happens.
#[derive(Debug)]
pub struct Queued {
    pub(super) subject: String,
    pub(super) id: Option<String>,
    pub(super) payload: Bytes,
    /// Held for its `Drop`.
    pub(super) _charge: Charge,
}

/// What the capture thread hands the worker: an event, formatted there (JSON, subject, id) so
/// that capture pays only for a clone; or a message formatted already (the collector's own).
#[derive(Debug)]
pub enum Outgoing {
    Event(Box<Event>, Charge),
    Message(Queued),
}

impl Outgoing {
    /// The message to publish (`None` for an event that is not forwarded).
    pub(super) fn into_message(self, prefix: &str) -> Option<Queued> {
        match self {
            Self::Message(message) => Some(message),
            Self::Event(event, charge) => {
                let id = message_id(&event)?;
                let mut line = String::new();
                crate::sink::json::write_event(&event, &mut line);
                if line.ends_with('\n') {
                    line.pop();
                }
                Some(Queued {
                    subject: subject(prefix, &event),
                    id: Some(id),
                    payload: Bytes::from(line),
                    _charge: charge,
                })
            }
        }
    }
}

/// What a queued event is charged: the event, its heap bytes, and the JSON message it becomes
/// (its text again, escaped, and about 500 bytes of fields), bytes.
pub(super) fn queued_event_bytes(event: &Event) -> usize {
    let heap = match event {
        Event::Record(r) => {
            r.text.len()
                + r.fields
                    .iter()
                    .map(|f| f.key.len() + f.value.len() + 48)
                    .sum::<usize>()
                + r.header_extra.iter().map(|h| h.len() + 24).sum::<usize>()
                + r.release.as_ref().map_or(0, String::len)
        }
        Event::Malformed(m) => m.payload.len(),
        _ => 0,
    };
    std::mem::size_of::<Event>() + 2 * heap + 512 + QUEUED_OVERHEAD
}

/// Bytes charged to the budget, released on drop.
#[derive(Debug)]
pub struct Charge {
    pub(super) budget: MemoryBudget,
    pub(super) bytes: usize,
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.release(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netconsole::Record;

    #[test]
    fn subjects_name_the_sender() {
        let record = Event::Record(Record::example(b"hello"));
        assert_eq!(subject("netcon", &record), "netcon.records.10_77_0_10");
        assert_eq!(sender_token("fd00:1::10".parse().unwrap()), "fd00_1__10");
        assert_eq!(sender_token("::ffff:10.1.0.1".parse().unwrap()), "10_1_0_1");
    }

    #[test]
    fn ids_come_from_the_datagram_only() {
        let a = Record::example(b"hello");
        let mut b = a.clone();
        // Another collector: another receive time and interface, same datagram.
        b.received += chrono::Duration::milliseconds(3);
        b.ifindex = 9;
        let id = message_id(&Event::Record(a.clone())).unwrap();
        assert_eq!(id, "10.77.0.10:6665/x/4373204/377");
        assert_eq!(message_id(&Event::Record(b)), Some(id.clone()));
        let mut next = a.clone();
        next.seq = Some(378);
        assert_ne!(message_id(&Event::Record(next)), Some(id));
        let mut plain = a.clone();
        plain.format = RecordFormat::Plain;
        plain.seq = None;
        plain.timestamp_us = None;
        let plain_id = message_id(&Event::Record(plain.clone())).unwrap();
        assert_eq!(
            plain_id,
            format!("10.77.0.10:6665/p/{:016x}", fnv1a(b"hello"))
        );
        plain.text = b"hellp".to_vec();
        assert_ne!(message_id(&Event::Record(plain)), Some(plain_id));
    }

    #[test]
    fn fnv1a_matches_the_reference_vectors() {
        // From the FNV reference test suite (isthe.com/chongo/tech/comp/fnv).
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }
}
