//! What the collector counts, in one snapshot, and the ways it goes out: the stats line,
//! `--stats-format json` and the Prometheus endpoint of `--metrics`.
//!
//! The pipeline owns its counters and is the only one to read them: a [`Snapshot`] is taken in
//! the pipeline loop, between batches, and handed on; it is encoded on a blocking thread, not
//! on the loop's. The HTTP side of `--metrics` never
//! touches the pipeline: a scrape sends a request into the loop ([`MetricsServer::request`])
//! and encodes the snapshot that comes back. A pipeline that is stuck therefore answers no
//! scrape (the scrape fails with 503 after [`SCRAPE_TIMEOUT`]), which is what a monitoring
//! system should see.
//!
//! Metric names follow the stats line: a count of events `x` is `netcon_x_total` (a counter), a
//! level is `netcon_x` (a gauge). Capture counters are `netcon_capture_<counter>_total` with a
//! `backend` label (`xdp`, `raw`, `file`), datagrams carry an `interface` label, a forwarder's
//! counters a `url` label. `--metrics-per-sender` adds the `netcon_sender_*` family, one series
//! per sender the decoder tracks (at most its table size); a sender evicted from the table
//! leaves the family at the next scrape.
//!
//! The endpoint is a deliberately small HTTP/1.1 server on the collector's own runtime:
//! `GET /metrics` (the Prometheus text format, version 0.0.4), one request per connection, at
//! most [`MAX_CONNECTIONS`] at once, heads of at most [`MAX_REQUEST_BYTES`] read within
//! [`REQUEST_TIMEOUT`], responses written within [`RESPONSE_TIMEOUT`]. It serves nothing else
//! and reads no body.

mod prometheus;
mod server;

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::capture::CaptureCounters;
use crate::netconsole::DecoderStats;
use crate::notice::LossReason;
use crate::sink::SinkCounter;

pub use self::server::{MetricsServer, ScrapeRequest};

/// Connections served at once: 8. More are closed as soon as they are accepted.
pub const MAX_CONNECTIONS: usize = 8;
/// Largest request head read: 8 KiB. A longer one gets 431.
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// Time a client has to send its request head: 5 s.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a client has to read the response: 30 s (a scrape with `--metrics-per-sender` and
/// 10,000 senders is a few MiB).
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
/// Time the pipeline has to answer a scrape: 5 s. A loop that cannot answer within it is
/// stuck, and the scrape gets 503.
pub const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);
/// Interfaces counted one by one for the `interface` label: 64. Datagrams from further ones
/// (only possible from a pcapng file with more interfaces) are counted as `other`.
pub const MAX_INTERFACES: usize = 64;

/// Why `--metrics` cannot serve.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The address cannot be bound.
    #[error(
        "--metrics {addr}: cannot listen: {source} (is another process on that port? pick \
         another, or an address this host has)"
    )]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The bind error.
        #[source]
        source: io::Error,
    },
}

/// The memory budget, as a snapshot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Memory {
    /// Bytes charged now.
    pub used: u64,
    /// The most ever charged at once.
    pub peak: u64,
    /// The limit (`--max-memory-mib`).
    pub limit: u64,
    /// Charges that did not fit.
    pub refused: u64,
}

impl Memory {
    /// The budget's numbers now.
    #[must_use]
    pub fn of(budget: &crate::budget::MemoryBudget) -> Self {
        let bytes = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        Self {
            used: bytes(budget.used()),
            peak: bytes(budget.peak()),
            limit: bytes(budget.limit()),
            refused: budget.refused(),
        }
    }
}

/// Frames lost before decoding for one reason on one interface, as reported in `capture_lost`
/// notices since capture started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureLoss {
    /// Why.
    pub reason: LossReason,
    /// Where (for the backend's own counters, its interfaces comma-separated).
    pub interface: String,
    /// Frames.
    pub frames: u64,
}

/// What was heard from one sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SenderSample {
    /// Address and port.
    pub sender: SocketAddr,
    /// Its counts.
    pub tally: crate::netconsole::SenderTally,
}

/// Every counter of a run at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// When it was taken.
    pub time: DateTime<Utc>,
    /// The capture backend's counters.
    pub capture: CaptureCounters,
    /// Datagrams decoded, by interface name (`file`, `file:N` for a capture file).
    pub datagrams: Vec<(String, u64)>,
    /// Frames that were not well-formed UDP.
    pub malformed_frames: u64,
    /// UDP to a port not configured.
    pub other_ports: u64,
    /// Datagrams from senders outside `--allow`.
    pub denied: u64,
    /// The decoder's counters.
    pub decoder: DecoderStats,
    /// The sinks' counters.
    pub sinks: Vec<SinkCounter>,
    /// The memory budget.
    pub memory: Memory,
    /// Frames reported lost in `capture_lost` notices, by reason and interface (every counter
    /// followed, lost frames or not).
    pub capture_lost: Vec<CaptureLoss>,
    /// Per-sender counts (empty unless asked for).
    pub senders: Vec<SenderSample>,
}

/// The backend's name, as the `backend` label and JSON `backend` give it.
#[must_use]
pub fn backend_name(capture: &CaptureCounters) -> &'static str {
    match capture {
        CaptureCounters::Xdp(_) => "xdp",
        CaptureCounters::Raw(_) => "raw",
        CaptureCounters::File(_) => "file",
    }
}

/// The XDP ring buffer's fill, where the backend has one and it could be read.
fn ring_fill(capture: &CaptureCounters) -> Option<crate::capture::RingFill> {
    match capture {
        CaptureCounters::Xdp(c) => c.ring,
        CaptureCounters::Raw(_) | CaptureCounters::File(_) => None,
    }
}

/// The capture counters by name, as the stats line names them.
fn capture_counters(capture: &CaptureCounters) -> Vec<(&'static str, &'static str, u64)> {
    match capture {
        CaptureCounters::Xdp(c) => vec![
            ("seen", "Frames the XDP program ran on.", c.seen),
            (
                "matched",
                "Frames the XDP program matched (netconsole UDP ports).",
                c.matched,
            ),
            (
                "ringbuf_full",
                "Matched frames lost because the ring buffer to userspace was full.",
                c.ringbuf_full,
            ),
            (
                "truncated",
                "Matched frames longer than the capture length, delivered cut.",
                c.truncated,
            ),
            (
                "copy_failed",
                "Matched frames the XDP program could not copy.",
                c.copy_failed,
            ),
            (
                "wakeups",
                "Records after which the XDP program woke the reader (parked, or behind).",
                c.wakeups,
            ),
        ],
        CaptureCounters::Raw(c) => vec![
            (
                "received",
                "Frames read from the packet sockets.",
                c.received,
            ),
            (
                "kernel_received",
                "Frames the kernel queued for the packet sockets.",
                c.kernel_received,
            ),
            (
                "kernel_dropped",
                "Frames the kernel dropped because a socket buffer was full.",
                c.kernel_dropped,
            ),
            (
                "truncated",
                "Frames longer than the read buffer, delivered cut.",
                c.truncated,
            ),
            (
                "queue_full",
                "Frames lost because the queue from the capture thread to the pipeline was full.",
                c.queue_full,
            ),
        ],
        CaptureCounters::File(c) => vec![
            ("read", "Frames read from the capture file.", c.read),
            (
                "skipped",
                "Frames of a link type netcon cannot decode.",
                c.skipped,
            ),
        ],
    }
}

/// A decoder counter: its stats line and JSON name, its metric name (without `netcon_` and
/// `_total`), its help text, and how to read it.
type DecoderCounter = (
    &'static str,
    &'static str,
    &'static str,
    fn(&DecoderStats) -> u64,
);

/// The decoder's counters.
const DECODER_COUNTERS: [DecoderCounter; 23] = [
    ("records", "records", "Records decoded.", |d| d.records),
    (
        "decoded_datagrams",
        "decoded_datagrams",
        "Datagrams the decoder took.",
        |d| d.datagrams,
    ),
    (
        "empty",
        "empty_datagrams",
        "Empty payloads (ignored).",
        |d| d.empty,
    ),
    (
        "fragments",
        "fragments",
        "ncfrag fragments received.",
        |d| d.fragments,
    ),
    (
        "reassembled",
        "reassembled",
        "Records reassembled whole from fragments.",
        |d| d.reassembled,
    ),
    (
        "fragments_expired",
        "fragments_expired",
        "Reassemblies emitted incomplete because their deadline passed.",
        |d| d.fragments_expired,
    ),
    (
        "fragments_evicted",
        "fragments_evicted",
        "Reassemblies emitted incomplete to make room for newer ones.",
        |d| d.fragments_evicted,
    ),
    (
        "incomplete",
        "incomplete_records",
        "Records emitted with bytes missing.",
        |d| d.incomplete_records,
    ),
    (
        "partial",
        "partial_lines",
        "Plain lines emitted without their newline.",
        |d| d.partial_lines,
    ),
    (
        "continuations_joined",
        "continuations_joined",
        "Continuation records joined onto the one they continue.",
        |d| d.continuations_joined,
    ),
    (
        "continuation_timeouts",
        "continuation_timeouts",
        "Continuation records emitted alone after waiting in vain.",
        |d| d.continuation_timeouts,
    ),
    (
        "continuations_cut",
        "continuations_cut",
        "Continuation chains emitted, marked partial, because they reached their bound.",
        |d| d.continuations_cut,
    ),
    (
        "budget_shed",
        "budget_shed",
        "Pieces of held state emitted early, and senders evicted, because the memory budget was full.",
        |d| d.budget_shed,
    ),
    (
        "suspicious",
        "suspicious_datagrams",
        "Datagrams whose seq or msgid jumped further than a real sender's can (forged).",
        |d| d.suspicious,
    ),
    (
        "senders_evicted",
        "senders_evicted",
        "Senders evicted from the table (least recently heard first).",
        |d| d.senders_evicted,
    ),
    (
        "records_lost",
        "records_lost",
        "Records missing according to sequence number gaps.",
        |d| d.records_lost,
    ),
    (
        "msgid_lost",
        "msgid_lost",
        "Messages missing according to sysdata msgid gaps.",
        |d| d.msgid_lost,
    ),
    (
        "late",
        "late_records",
        "Records that arrived after a higher sequence number.",
        |d| d.late,
    ),
    ("reboots", "reboots", "Sender reboots seen.", |d| d.reboots),
    (
        "duplicates",
        "duplicates",
        "Duplicate datagrams dropped.",
        |d| d.duplicates,
    ),
    (
        "malformed",
        "malformed_datagrams",
        "Datagrams that could not be decoded.",
        |d| d.malformed,
    ),
    (
        "bad_escapes",
        "bad_escapes",
        "Invalid backslash escapes kept literally.",
        |d| d.bad_escapes,
    ),
    ("panics", "panics", "Crash reports begun.", |d| d.panics),
];

impl Snapshot {
    /// Matched frames the capture lost before they could be read.
    #[must_use]
    pub fn capture_lost(&self) -> u64 {
        self.capture.lost()
    }

    /// Frames reported lost in `capture_lost` notices, all reasons and interfaces (the stats
    /// line's `capture_lost`).
    #[must_use]
    pub fn capture_lost_reported(&self) -> u64 {
        self.capture_lost
            .iter()
            .fold(0, |sum, l| sum.saturating_add(l.frames))
    }

    /// Datagrams decoded, all interfaces.
    #[must_use]
    pub fn datagrams_total(&self) -> u64 {
        self.datagrams.iter().map(|(_, n)| n).sum()
    }

    /// One JSON object (no newline): `{"type":KIND,"time":...,"backend":...,"capture":{...},
    /// "lost":N,"datagrams":N,...}` with every counter of the stats line under its stats line
    /// name (sink counters of several instances summed), plus `interfaces` and `memory`. The
    /// per-sender counts are left out, so that the line stays small with 10,000 senders.
    #[must_use]
    pub fn to_json(&self, kind: &str) -> String {
        use serde_json::{Map, Value, json};
        let mut o = Map::new();
        o.insert("type".into(), json!(kind));
        o.insert(
            "time".into(),
            json!(
                self.time
                    .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
            ),
        );
        o.insert("backend".into(), json!(backend_name(&self.capture)));
        let mut capture: Map<String, Value> = capture_counters(&self.capture)
            .into_iter()
            .map(|(name, _, value)| (name.to_owned(), json!(value)))
            .collect();
        if let Some(ring) = ring_fill(&self.capture) {
            capture.insert("ringbuf_used".into(), json!(ring.used));
            capture.insert("ringbuf_size".into(), json!(ring.size));
        }
        o.insert("capture".into(), Value::Object(capture));
        o.insert("lost".into(), json!(self.capture_lost()));
        o.insert("capture_lost".into(), json!(self.capture_lost_reported()));
        let losses: Vec<Value> = self
            .capture_lost
            .iter()
            .map(|l| json!({"reason": l.reason.as_str(), "interface": l.interface, "frames": l.frames}))
            .collect();
        o.insert("capture_losses".into(), Value::Array(losses));
        o.insert("datagrams".into(), json!(self.datagrams_total()));
        let interfaces: Map<String, Value> = self
            .datagrams
            .iter()
            .map(|(name, n)| (name.clone(), json!(n)))
            .collect();
        o.insert("interfaces".into(), Value::Object(interfaces));
        o.insert("malformed_frames".into(), json!(self.malformed_frames));
        o.insert("other_ports".into(), json!(self.other_ports));
        o.insert("denied".into(), json!(self.denied));
        o.insert("senders".into(), json!(self.decoder.senders));
        o.insert("held_bytes".into(), json!(self.decoder.held_bytes));
        for (name, _, _, value) in DECODER_COUNTERS {
            o.insert(name.into(), json!(value(&self.decoder)));
        }
        for c in &self.sinks {
            let sum = o.get(c.name).and_then(Value::as_u64).unwrap_or(0) + c.value;
            o.insert(c.name.into(), json!(sum));
        }
        o.insert(
            "memory".into(),
            json!({
                "used": self.memory.used,
                "peak": self.memory.peak,
                "limit": self.memory.limit,
                "refused": self.memory.refused,
            }),
        );
        Value::Object(o).to_string()
    }
}

/// The interface index under which datagrams of interfaces beyond [`MAX_INTERFACES`] are
/// counted (labelled `other`).
pub const OTHER_INTERFACES: u32 = u32::MAX;

/// Counts one datagram of interface `ifindex` in `counts` (at most [`MAX_INTERFACES`] entries
/// and [`OTHER_INTERFACES`]).
pub fn count_datagram(counts: &mut Vec<(u32, u64)>, ifindex: u32) {
    if let Some((_, n)) = counts.iter_mut().find(|(i, _)| *i == ifindex) {
        *n += 1;
        return;
    }
    let ifindex = if counts.len() < MAX_INTERFACES {
        ifindex
    } else {
        OTHER_INTERFACES
    };
    match counts.iter_mut().find(|(i, _)| *i == ifindex) {
        Some((_, n)) => *n += 1,
        None => counts.push((ifindex, 1)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::{RawCounters, RingFill, XdpCounters};
    use crate::netconsole::SenderTally;

    pub(super) fn snapshot() -> Snapshot {
        Snapshot {
            time: DateTime::from_timestamp(1_795_817_636, 0).unwrap_or_default(),
            capture: CaptureCounters::Xdp(XdpCounters {
                seen: 10,
                matched: 9,
                ringbuf_full: 2,
                truncated: 0,
                copy_failed: 1,
                wakeups: 7,
                ring: Some(RingFill {
                    used: 4096,
                    size: 8 << 20,
                }),
            }),
            datagrams: vec![("eth1".into(), 5), ("eth2".into(), 1)],
            malformed_frames: 1,
            other_ports: 0,
            denied: 0,
            decoder: DecoderStats {
                records: 4,
                senders: 2,
                records_lost: 3,
                panics: 1,
                suspicious: 1,
                senders_evicted: 3,
                held_bytes: 640,
                ..DecoderStats::default()
            },
            sinks: vec![
                SinkCounter::total("forward_sent", "Sent.", 4).of("url", "syslog+tcp://a:514"),
                SinkCounter::total("forward_sent", "Sent.", 2).of("url", "syslog+udp://b:514"),
                SinkCounter::gauge("forward_queued", "Queued.", 1).of("url", "syslog+tcp://a:514"),
                SinkCounter::total("hooks_run", "Run.", 1),
            ],
            memory: Memory {
                used: 100,
                peak: 200,
                limit: 1000,
                refused: 0,
            },
            capture_lost: vec![CaptureLoss {
                reason: LossReason::RingFull,
                interface: "eth1,eth2".into(),
                frames: 2,
            }],
            senders: Vec::new(),
        }
    }

    #[test]
    fn json_has_every_xdp_counter_and_wakeups_are_no_loss() {
        let v: serde_json::Value = serde_json::from_str(&snapshot().to_json("stats")).unwrap();
        assert_eq!(v["backend"], "xdp");
        for (name, value) in [
            ("seen", 10),
            ("matched", 9),
            ("ringbuf_full", 2),
            ("truncated", 0),
            ("copy_failed", 1),
            ("wakeups", 7),
        ] {
            assert_eq!(v["capture"][name], value, "{name} in {v}");
        }
        assert_eq!(v["lost"], 3, "ringbuf_full + copy_failed, not wakeups");
        assert_eq!(v["capture"]["ringbuf_used"], 4096);
        assert_eq!(v["capture"]["ringbuf_size"], 8 << 20);
    }

    #[test]
    fn no_ring_fill_no_gauge() {
        let mut s = snapshot();
        if let CaptureCounters::Xdp(c) = &mut s.capture {
            c.ring = None;
        }
        let text = s.to_prometheus();
        assert!(!text.contains("netcon_ringbuf_"), "{text}");
        let v: serde_json::Value = serde_json::from_str(&s.to_json("stats")).unwrap();
        assert!(v["capture"].get("ringbuf_used").is_none(), "{v}");
        assert!(v["capture"].get("ringbuf_size").is_none(), "{v}");
    }

    #[test]
    fn json_has_the_stats_line_names() {
        let mut s = snapshot();
        s.capture = CaptureCounters::Raw(RawCounters {
            received: 6,
            kernel_received: 7,
            kernel_dropped: 1,
            truncated: 0,
            queue_full: 4,
        });
        let v: serde_json::Value = serde_json::from_str(&s.to_json("stats")).unwrap();
        assert_eq!(v["type"], "stats");
        assert_eq!(v["time"], "2026-11-27T22:13:56.000000Z");
        assert_eq!(v["backend"], "raw");
        assert_eq!(v["capture"]["kernel_dropped"], 1);
        assert_eq!(v["capture"]["queue_full"], 4);
        assert_eq!(v["lost"], 5);
        assert_eq!(v["capture_lost"], 2, "as reported in capture_lost notices");
        assert_eq!(v["capture_losses"][0]["reason"], "ring_full");
        assert_eq!(v["capture_losses"][0]["frames"], 2);
        assert_eq!(v["suspicious"], 1);
        assert_eq!(v["senders_evicted"], 3);
        assert_eq!(v["held_bytes"], 640);
        assert_eq!(v["datagrams"], 6);
        assert_eq!(v["interfaces"]["eth1"], 5);
        assert_eq!(v["records"], 4);
        assert_eq!(v["records_lost"], 3);
        assert_eq!(v["senders"], 2);
        assert_eq!(v["forward_sent"], 6, "summed over forwarders");
        assert_eq!(v["hooks_run"], 1);
        assert_eq!(v["memory"]["limit"], 1000);
        s.senders = vec![SenderSample {
            sender: "10.0.0.1:6665".parse().unwrap(),
            tally: SenderTally::default(),
        }];
        let with_senders = s.to_json("stats");
        assert!(!with_senders.contains("10.0.0.1"), "{with_senders}");
    }

    #[test]
    fn interfaces_beyond_the_bound_are_other() {
        let mut counts = Vec::new();
        for i in 0..MAX_INTERFACES {
            count_datagram(&mut counts, u32::try_from(i).unwrap());
        }
        count_datagram(&mut counts, 0);
        count_datagram(&mut counts, 1000);
        count_datagram(&mut counts, 1001);
        assert_eq!(counts.len(), MAX_INTERFACES + 1);
        assert_eq!(counts[0], (0, 2));
        assert_eq!(counts[MAX_INTERFACES], (OTHER_INTERFACES, 2));
    }
}
