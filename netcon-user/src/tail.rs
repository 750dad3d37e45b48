//! `netcon-sniff tail nats://HOST[:PORT][/PREFIX]`: what a fleet of collectors forwards to NATS,
//! printed as a local capture prints it.
//!
//! With `--stream NAME` it reads the `JetStream` stream through an ordered consumer (nothing is
//! acknowledged or left behind on the server), from the start or from `--since` ago, then
//! follows it (or, with `--no-follow`, stops at its end). Without, it subscribes to the live
//! subjects. Each message is the JSON object a collector's `--format json` prints; `--format
//! json` passes it through, `--format text` (the default) turns it back into the record or
//! event and prints it with the text sink, so the lines read exactly as `netcon-sniff -i`
//! prints them on the collector.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::{self, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use async_nats::jetstream;
use chrono::{DateTime, Utc};
use futures_util::StreamExt as _;
use serde_json::Value;

use crate::netconsole::{
    Caller, ContFlag, Event, Flags, Incomplete, LossKind, Lost, PanicKind, PanicMark, Priority,
    Rebooted, Record, RecordFormat, Sysdata,
};
use crate::notice::{
    CaptureLost, ForwardLost, HookNotice, HookOutcome, LossReason, Notice, SkipReason,
};
use crate::sink::escape::escape_into;
use crate::sink::nats::{NatsUrl, sender_token};
use crate::sink::text;

/// How long to wait for the first connection before giving up: 10 s.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// `tail` options.
#[derive(Debug, clap::Args)]
#[expect(
    clippy::doc_markdown,
    reason = "doc comments here are the --help text, read in a terminal"
)]
pub struct TailArgs {
    /// Where the collectors publish: nats://HOST[:PORT][,HOST[:PORT]...][/PREFIX], as given to
    /// their --forward (default port 4222, default prefix `netcon`; tls:// for TLS).
    #[arg(value_name = "URL")]
    pub url: NatsUrl,

    /// Read the JetStream stream NAME (as given to the collectors' --nats-stream): what is
    /// stored, each record once, then what comes. Without it, only what is published from
    /// now on is shown.
    #[arg(long, value_name = "NAME",
          value_parser = |s: &str| crate::sink::nats::parse_stream_name(s).map_err(|e| e.to_string()))]
    pub stream: Option<String>,

    /// Only this sender's records and events (its IP address); repeat for several.
    #[arg(long = "sender", value_name = "ADDR")]
    pub senders: Vec<IpAddr>,

    /// Start this long ago instead of at the start of the stream: e.g. 90s, 15m, 2h, 1d.
    #[arg(long, value_name = "DURATION", requires = "stream", value_parser = parse_duration)]
    pub since: Option<Duration>,

    /// Stop at the end of what the stream holds instead of following it.
    #[arg(long, requires = "stream")]
    pub no_follow: bool,

    /// `text`: the lines a local capture prints. `json`: the objects as published, one a line.
    #[arg(long, value_enum, default_value_t = TailFormat::Text, value_name = "FORMAT")]
    pub format: TailFormat,
}

/// Output format of `tail`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TailFormat {
    /// As a local capture prints records.
    Text,
    /// The JSON objects as published.
    Json,
}

/// Why `tail` stopped.
#[derive(Debug, thiserror::Error)]
pub enum TailError {
    /// No server answered.
    #[error("cannot connect to NATS at {url} (is nats-server running there, and the port open?)")]
    Connect {
        /// The URL.
        url: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The stream cannot be read.
    #[error(
        "cannot read the JetStream stream {stream:?} at {url} (see `nats stream ls`; is it the collectors' --nats-stream?)"
    )]
    Stream {
        /// The URL.
        url: String,
        /// The stream.
        stream: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Subscribing failed.
    #[error("cannot subscribe to {subject} at {url}")]
    Subscribe {
        /// The URL.
        url: String,
        /// The subject.
        subject: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Writing to stdout failed (a closed pipe too; the binary exits 0 on it).
    #[error("writing output: {source}")]
    Output {
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// `90s`, `15m`, `2h`, `1d`, or plain seconds.
///
/// # Errors
/// A message saying what a duration looks like.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 90s, 15m, 2h, 1d)"))?;
    let seconds = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("{s:?}: the unit is s, m, h or d")),
    };
    Ok(Duration::from_secs(n.saturating_mul(seconds)))
}

/// Prints what the collectors publish until `shutdown` completes (or, with `--no-follow`, the
/// end of the stream).
///
/// # Errors
/// [`TailError`] when NATS or the stream cannot be reached, or stdout cannot be written.
pub async fn run(args: &TailArgs, shutdown: impl Future<Output = ()>) -> Result<(), TailError> {
    let url = args.url.to_string();
    let scheme = if args.url.tls { "tls" } else { "nats" };
    let servers = args
        .url
        .servers
        .iter()
        .map(|s| format!("{scheme}://{s}").parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TailError::Connect {
            url: url.clone(),
            source: e.into(),
        })?;
    let client = async_nats::ConnectOptions::new()
        .name("netcon-sniff tail")
        .connection_timeout(CONNECT_TIMEOUT)
        .require_tls(args.url.tls)
        .connect(servers)
        .await
        .map_err(|e| TailError::Connect {
            url: url.clone(),
            source: e.into(),
        })?;
    let filter = Filter::new(&args.senders);
    let mut printer = Printer {
        format: args.format,
        filter,
        line: String::new(),
    };
    tokio::pin!(shutdown);
    match &args.stream {
        None => {
            let subject = format!("{}.>", args.url.prefix);
            let mut subscriber =
                client
                    .subscribe(subject.clone())
                    .await
                    .map_err(|e| TailError::Subscribe {
                        url: url.clone(),
                        subject,
                        source: e.into(),
                    })?;
            loop {
                tokio::select! {
                    () = &mut shutdown => return Ok(()),
                    message = subscriber.next() => match message {
                        Some(message) => printer.print(&message.subject, &message.payload)?,
                        None => return Ok(()),
                    },
                }
            }
        }
        Some(name) => read_stream(args, client, name, &mut printer, shutdown).await,
    }
}

/// Prints the stream `name` through an ordered consumer (see [`run`]).
async fn read_stream(
    args: &TailArgs,
    client: async_nats::Client,
    name: &str,
    printer: &mut Printer,
    shutdown: impl Future<Output = ()>,
) -> Result<(), TailError> {
    let url = args.url.to_string();
    tokio::pin!(shutdown);
    let stream_error = |source: Box<dyn std::error::Error + Send + Sync>| TailError::Stream {
        url: url.clone(),
        stream: name.to_owned(),
        source,
    };
    let context = jetstream::new(client);
    let stream = context
        .get_stream(name)
        .await
        .map_err(|e| stream_error(e.into()))?;
    let prefix = &args.url.prefix;
    // The server filters when there is one sender; several are filtered here.
    let filter_subject = match args.senders.as_slice() {
        [one] => format!("{prefix}.*.{}", sender_token(*one)),
        _ => format!("{prefix}.>"),
    };
    let deliver_policy = match args.since {
        Some(since) => jetstream::consumer::DeliverPolicy::ByStartTime {
            start_time: Utc::now()
                - chrono::Duration::from_std(since).unwrap_or(chrono::Duration::MAX),
        },
        None => jetstream::consumer::DeliverPolicy::All,
    };
    let mut consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subject,
            deliver_policy,
            ..Default::default()
        })
        .await
        .map_err(|e| stream_error(e.into()))?;
    if args.no_follow {
        let pending = consumer
            .info()
            .await
            .map_err(|e| stream_error(e.into()))?
            .num_pending;
        if pending == 0 {
            return Ok(());
        }
    }
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| stream_error(e.into()))?;
    loop {
        tokio::select! {
            () = &mut shutdown => return Ok(()),
            message = messages.next() => match message {
                Some(Ok(message)) => {
                    printer.print(&message.subject, &message.payload)?;
                    let end = message.info().is_ok_and(|info| info.pending == 0);
                    if args.no_follow && end {
                        return Ok(());
                    }
                }
                Some(Err(error)) => {
                    tracing::warn!(stream = name, %error, "reading the stream; carrying on");
                }
                None => return Ok(()),
            },
        }
    }
}

/// The senders to show (all when empty), as subject tokens.
struct Filter {
    tokens: BTreeSet<String>,
}

impl Filter {
    fn new(senders: &[IpAddr]) -> Self {
        Self {
            tokens: senders.iter().map(|ip| sender_token(*ip)).collect(),
        }
    }

    /// Whether a message on `subject` is shown: a sender's (`PREFIX.records.S`,
    /// `PREFIX.events.S`) when S is wanted; a collector's own (`PREFIX.collector.HOST`) only
    /// without `--sender`.
    fn wants(&self, subject: &str) -> bool {
        if self.tokens.is_empty() {
            return true;
        }
        let mut tokens = subject.rsplit('.');
        let last = tokens.next().unwrap_or_default();
        let kind = tokens.next().unwrap_or_default();
        matches!(kind, "records" | "events") && self.tokens.contains(last)
    }
}

struct Printer {
    format: TailFormat,
    filter: Filter,
    line: String,
}

impl Printer {
    fn print(&mut self, subject: &str, payload: &[u8]) -> Result<(), TailError> {
        if !self.filter.wants(subject) {
            return Ok(());
        }
        self.line.clear();
        match self.format {
            TailFormat::Json => {
                escape_json_line(payload, &mut self.line);
            }
            TailFormat::Text => match serde_json::from_slice::<Value>(payload) {
                Ok(value) => write_text(&value, &mut self.line),
                Err(error) => {
                    tracing::warn!(subject, %error, "a message that is not JSON; skipped");
                    return Ok(());
                }
            },
        }
        let mut out = io::stdout().lock();
        out.write_all(self.line.as_bytes())
            .and_then(|()| out.flush())
            .map_err(|source| TailError::Output { source })
    }
}

/// The payload as one line: a JSON object has no raw newline, but a message from elsewhere
/// might; any such byte is escaped so that one message stays one line.
fn escape_json_line(payload: &[u8], out: &mut String) {
    match std::str::from_utf8(payload) {
        Ok(text) if !text.contains(['\n', '\r']) => out.push_str(text),
        _ => escape_into(payload, out),
    }
    out.push('\n');
}

/// The text line(s) for one published object: records and the decoder's events through the
/// text sink; the collector's own and unknown events in the same shape.
pub fn write_text(value: &Value, out: &mut String) {
    if let Some(event) = event_from_json(value) {
        text::write_event(&event, out);
        return;
    }
    if let Some(notice) = notice_from_json(value) {
        // The collector's notice line, and which collector it was.
        text::write_notice(&notice, out);
        if let Some(collector) = value["collector"].as_str() {
            out.pop();
            out.push_str(" [collector ");
            escape_into(collector.as_bytes(), out);
            out.push_str("]\n");
        }
        return;
    }
    let kind = value["type"].as_str().unwrap_or("unknown");
    if let ("malformed", Some(received), Some(sender)) =
        (kind, time(&value["received"]), sender(&value["sender"]))
    {
        text::write_prefix(received, sender, out);
        let _ = write!(
            out,
            "-- MALFORMED ({}): ",
            value["error"].as_str().unwrap_or_default()
        );
        escape_into(&text_bytes(value, "payload"), out);
        out.push('\n');
    } else {
        let mut escaped = String::new();
        escape_into(value.to_string().as_bytes(), &mut escaped);
        let _ = writeln!(out, "-- {} {escaped}", kind.to_uppercase());
    }
}

/// One of a collector's own notices (`capture_lost`, `hook_*`, `forward_lost`), as its JSON sink
/// wrote it.
fn notice_from_json(value: &Value) -> Option<Notice> {
    let number = |key: &str| value[key].as_u64();
    let kind = value["type"].as_str()?;
    Some(match kind {
        "capture_lost" => {
            let reason = value["reason"].as_str()?;
            Notice::CaptureLost(CaptureLost {
                noticed: time(&value["noticed"])?,
                interface: value["interface"].as_str()?.to_owned(),
                reason: [
                    LossReason::RingFull,
                    LossReason::CopyFailed,
                    LossReason::Socket,
                    LossReason::QueueFull,
                    LossReason::Interface,
                ]
                .into_iter()
                .find(|r| r.as_str() == reason)?,
                frames: number("frames")?,
                sender: value["sender"].as_str().and_then(|s| s.parse().ok()),
            })
        }
        "forward_lost" => Notice::ForwardLost(ForwardLost {
            noticed: time(&value["noticed"])?,
            url: value["url"].as_str()?.to_owned(),
            messages: number("messages")?,
            first_dropped: time(&value["first_dropped"])?,
        }),
        "hook_skipped" | "hook_late" | "hook_timeout" => {
            let outcome = match kind {
                "hook_skipped" => {
                    let reason = value["reason"].as_str()?;
                    HookOutcome::Skipped(
                        [
                            SkipReason::RateLimited,
                            SkipReason::QueueFull,
                            SkipReason::Memory,
                        ]
                        .into_iter()
                        .find(|r| r.as_str() == reason)?,
                    )
                }
                "hook_late" => HookOutcome::Late {
                    waited: Duration::from_millis(number("waited_ms")?),
                },
                _ => HookOutcome::TimedOut {
                    after: Duration::from_secs(number("after_s")?),
                },
            };
            Notice::Hook(HookNotice {
                at: time(&value["at"])?,
                sender: sender(&value["sender"])?,
                outcome,
            })
        }
        _ => return None,
    })
}

fn time(value: &Value) -> Option<DateTime<Utc>> {
    value
        .as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
}

fn sender(value: &Value) -> Option<SocketAddr> {
    value.as_str().and_then(|s| s.parse().ok())
}

/// The bytes of a text field: its lossless `<key>_escaped` form when present (`\xNN` for a
/// byte that is not UTF-8, `\\` for a backslash), else the UTF-8 string.
fn text_bytes(value: &Value, key: &str) -> Vec<u8> {
    if let Some(escaped) = value[format!("{key}_escaped")].as_str() {
        return unescape(escaped);
    }
    value[key].as_str().unwrap_or_default().as_bytes().to_vec()
}

/// Undoes the JSON sink's lossless escape.
fn unescape(escaped: &str) -> Vec<u8> {
    let bytes = escaped.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i..] {
            [b'\\', b'\\', ..] => {
                out.push(b'\\');
                i += 2;
            }
            [b'\\', b'x', hi, lo, ..] => {
                let hex = [hi, lo];
                if let Some(b) = std::str::from_utf8(&hex)
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    out.push(b);
                    i += 4;
                } else {
                    out.push(b'\\');
                    i += 1;
                }
            }
            _ => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    out
}

fn panic_kind(name: &str) -> Option<PanicKind> {
    [
        PanicKind::Panic,
        PanicKind::Oops,
        PanicKind::Bug,
        PanicKind::GeneralProtectionFault,
        PanicKind::SoftLockup,
    ]
    .into_iter()
    .find(|k| k.as_str() == name)
}

/// A record, loss or reboot back from its JSON object, with what the text output shows.
#[must_use]
pub fn event_from_json(value: &Value) -> Option<Event> {
    let received = time(&value["received"])?;
    let sender = sender(&value["sender"])?;
    let ifindex = value["ifindex"]
        .as_u64()
        .and_then(|i| u32::try_from(i).ok())
        .unwrap_or_default();
    let u64_of = |key: &str| value[key].as_u64();
    match value["type"].as_str()? {
        "record" => {
            let flags = &value["flags"];
            let usize_of = |v: &Value| v.as_u64().and_then(|n| usize::try_from(n).ok());
            Some(Event::Record(Record {
                received,
                sender,
                ifindex,
                format: if value["format"] == "plain" {
                    RecordFormat::Plain
                } else {
                    RecordFormat::Extended
                },
                priority: u64_of("pri")
                    .and_then(|p| u16::try_from(p).ok())
                    .and_then(Priority::from_pri),
                seq: u64_of("seq"),
                timestamp_us: u64_of("timestamp_us"),
                kernel_time: time(&value["kernel_time"]),
                release: value["release"].as_str().map(str::to_owned),
                caller: value["caller"]
                    .as_str()
                    .map(|c| Caller::parse(c.as_bytes())),
                cont: ContFlag::from_byte(
                    value["cont"]
                        .as_str()
                        .and_then(|c| c.bytes().next())
                        .unwrap_or(b'-'),
                ),
                header_extra: Vec::new(),
                text: text_bytes(value, "text"),
                fields: Vec::new(),
                sysdata: Sysdata::default(),
                flags: Flags {
                    fragmented: flags["fragmented"].as_bool().unwrap_or_default(),
                    incomplete: match (
                        usize_of(&flags["incomplete"]["missing_bytes"]),
                        usize_of(&flags["incomplete"]["total_bytes"]),
                    ) {
                        (Some(missing_bytes), Some(total_bytes)) => Some(Incomplete {
                            missing_bytes,
                            total_bytes,
                        }),
                        _ => None,
                    },
                    partial: flags["partial"].as_bool().unwrap_or_default(),
                    continued: flags["continued"].as_bool().unwrap_or_default(),
                    panic: flags["panic"]["kind"]
                        .as_str()
                        .and_then(panic_kind)
                        .map(|kind| PanicMark {
                            event: flags["panic"]["event"].as_u64().unwrap_or_default(),
                            kind,
                            begins: flags["panic"]["begins"].as_bool().unwrap_or_default(),
                        }),
                },
            }))
        }
        "lost" => Some(Event::Lost(Lost {
            received,
            sender,
            ifindex,
            kind: if value["counter"] == "msgid" {
                LossKind::Msgid
            } else {
                LossKind::Seq
            },
            first: u64_of("first")?,
            last: u64_of("last")?,
            count: u64_of("count")?,
        })),
        "rebooted" => Some(Event::Rebooted(Rebooted {
            received,
            sender,
            ifindex,
            previous_seq: u64_of("previous_seq"),
            seq: u64_of("seq"),
            previous_timestamp_us: u64_of("previous_timestamp_us"),
            timestamp_us: u64_of("timestamp_us"),
        })),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every event of `payloads` printed by the text sink directly, and via JSON and back.
    fn both_ways(payloads: &[&[u8]]) -> (String, String) {
        let events = crate::testing::decode_events(payloads);
        let (mut direct, mut via_json) = (String::new(), String::new());
        for event in &events {
            text::write_event(event, &mut direct);
            let mut json = String::new();
            crate::sink::json::write_event(event, &mut json);
            if !json.is_empty() {
                write_text(&serde_json::from_str(&json).unwrap(), &mut via_json);
            }
        }
        (direct, via_json)
    }

    #[test]
    fn collector_notices_print_as_on_the_collector_with_its_name() {
        let at = DateTime::parse_from_rfc3339("2026-11-27T21:53:56.123456Z")
            .unwrap()
            .with_timezone(&Utc);
        let notices = [
            Notice::CaptureLost(CaptureLost {
                noticed: at,
                interface: "eth1".to_owned(),
                reason: LossReason::Interface,
                frames: 7,
                sender: None,
            }),
            Notice::ForwardLost(ForwardLost {
                noticed: at,
                url: "syslog+tcp://10.1.0.9:514".to_owned(),
                messages: 12,
                first_dropped: at,
            }),
            Notice::Hook(HookNotice {
                at,
                sender: "10.1.0.7:6665".parse().unwrap(),
                outcome: HookOutcome::Skipped(SkipReason::QueueFull),
            }),
            Notice::Hook(HookNotice {
                at,
                sender: "10.1.0.7:6665".parse().unwrap(),
                outcome: HookOutcome::Late {
                    waited: Duration::from_millis(2504),
                },
            }),
            Notice::Hook(HookNotice {
                at,
                sender: "[fd00:1::7]:6665".parse().unwrap(),
                outcome: HookOutcome::TimedOut {
                    after: Duration::from_mins(1),
                },
            }),
        ];
        for notice in &notices {
            let payload = crate::sink::nats::notice_payload(notice, "col\u{1b}1");
            let mut printed = String::new();
            write_text(&serde_json::from_str(&payload).unwrap(), &mut printed);
            let local = text::format_notice(notice);
            assert_eq!(
                printed,
                format!("{} [collector col\\u{{1b}}1]\n", local.trim_end()),
                "{payload}"
            );
        }
    }

    #[test]
    fn text_through_json_reads_as_a_local_capture() {
        let (direct, via_json) = both_ways(&[
            b"14,377,4373204,-,caller=T42;NCT h\\xc3\\xa9 raw[\\xff] back\\\\slash\n SUBSYSTEM=pci\n",
            b"0,380,4373300,-;Kernel panic - not syncing: test\n",
            b"6,1,10,-;after reboot\n",
            b"plain line\n",
            b"\x00\x01\x02,bad",
        ]);
        assert!(direct.contains("LOST"), "{direct}");
        assert!(direct.contains("REBOOTED"), "{direct}");
        assert!(direct.contains("[\\xff]"), "{direct}");
        assert_eq!(via_json, direct);
    }

    #[test]
    fn unescape_undoes_the_json_escape() {
        assert_eq!(unescape("a\\\\b\\xffc\\x4"), b"a\\b\xffc\\x4");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_mins(15)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_hours(2)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_hours(24)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("1w").is_err());
        assert!(parse_duration("m").is_err());
    }

    #[test]
    fn sender_filter_matches_the_subject_token() {
        let filter = Filter::new(&["10.1.0.10".parse().unwrap()]);
        assert!(filter.wants("netcon.records.10_1_0_10"));
        assert!(filter.wants("site.netcon.events.10_1_0_10"));
        assert!(!filter.wants("netcon.records.10_1_0_11"));
        assert!(!filter.wants("netcon.collector.10_1_0_10"));
        assert!(Filter::new(&[]).wants("netcon.collector.host"));
    }
}
