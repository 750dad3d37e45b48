//! `--forward`: every record to a syslog server, RFC 5424 over UDP (one datagram per message,
//! RFC 5426) or TCP (octet-counting framing, RFC 6587 §3.4.1).
//!
//! ```text
//! <14>1 2026-11-27T22:15:54.753542Z 10.77.0.10 kernel - - [netcon@32473 seq="377"
//!   ktime="4.373204" sender="10.77.0.10:6665"] NCT-202a75 UTF8 héllo
//! ```
//! (one line; wrapped here)
//!
//! The choices, and why:
//! - PRI is the record's facility and level. Plain-mode records carry none: they get `kern.notice`
//!   (5). `kern`, because what a console prints is the kernel's log, and receivers file it with
//!   the kernel's other messages (`kern.*`); `notice`, because the level is unknown, and notice is
//!   "normal but significant": above `*.info` filters, below anything that pages someone.
//!   Facilities above `local7` (possible only from writes to `/dev/kmsg`) do not fit RFC 5424's
//!   PRI: they go as `user` with the real value in `facility="N"`.
//! - TIMESTAMP is the record's estimated wall-clock time (`Record::kernel_time`) when known, else
//!   its receive time; RFC 3339 in UTC with microseconds.
//! - HOSTNAME is the sender's IP address (RFC 5424 §6.2.4 allows one), the machine that logged
//!   the line, not this collector. APP-NAME is `kernel`, as the sender's own syslog daemon would
//!   say, so that forwarded lines read like the sender's `kern.log`. PROCID and MSGID are `-`.
//! - Structured data `[netcon@32473 ...]`: `seq`, `ktime` (seconds since the sender booted, as
//!   `dmesg` prints it), `sender` (address and port), and when they apply `caller`, `panic`,
//!   `partial`, `incomplete` (missing bytes), `facility`, `truncated` (original MSG length).
//!   32473 is the private enterprise number IANA reserves for documentation (RFC 5612): netcon
//!   has none of its own; [`SD_ID`] is the one place to change it.
//! - What the record carries besides its text goes into the structured data as well, because
//!   it is what operators filter on downstream: typed sysdata (kernel 6.14+) and the release in
//!   the `netcon@32473` element under their own names (`cpu`, `taskname`, `msgid`, `release`),
//!   and every other `KEY=value` field (userdata from configfs, the record's dictionary such as
//!   `SUBSYSTEM` and `DEVICE`) in a second element, [`FIELDS_SD_ID`], in the order sent:
//!   `[fields@32473 dc="lab-7" rack="r12" SUBSYSTEM="net"]`. Keys become valid SD-NAMEs (at
//!   most 32 printable ASCII characters other than `=`, space, `]` and `"`; others are
//!   replaced by `_`); values are escaped like MSG text and then as RFC 5424 §6.3.3 asks.
//!   Fields beyond [`MAX_FIELDS_BYTES`] are left out and counted in `fields_dropped`.
//! - MSG is the text as UTF-8 without a BOM. RFC 5424 wants a BOM to declare UTF-8, but rsyslog
//!   keeps it as part of `%msg%` (three stray bytes in every file line), and receivers treat
//!   MSG as UTF-8 anyway. Bytes that are not UTF-8 and control characters other than LF and TAB
//!   are escaped as the text output does (`\xff`, `\u{1b}`, `\r`); `\` itself is not, so the
//!   text reads as sent. One message per record: a multi-line record keeps its LFs (octet
//!   counting makes that safe on TCP), because it is one printk and its lines belong together;
//!   rsyslog shows them as `#012`. A message never exceeds [`MAX_MESSAGE_BYTES`].
//! - Losses, reboots and malformed datagrams are forwarded too, as `netcon` (APP-NAME) messages
//!   about the sender with MSGID `lost`, `reboot` or `malformed` and facility `daemon`
//!   (warning, notice, warning). Duplicates are not (they are counted in the stats).
//!
//! Delivery never blocks capture: [`Forwarder::event`] formats and `try_send`s into a bounded
//! queue ([`QUEUE_MESSAGES`]) and counts what does not fit; the drops become `forward_lost`
//! notices in the collector's output and, once there is room again, one `forward_lost` message
//! to the server ahead of what follows the gap ([`super::drops`]). A worker thread of its own, running a
//! small tokio runtime, owns the socket. It is a thread rather than a task on the caller's
//! runtime because that runtime is current-thread: while a capture file is read it never
//! yields, and when `run` returns it drops its tasks with their queues. With a thread, messages
//! go out while capture runs, and [`Forwarder::close`] (also on drop) gives the worker
//! [`SHUTDOWN_GRACE`] to deliver what is queued.
//!
//! TCP reconnects with exponential backoff ([`RECONNECT_MIN`] to [`RECONNECT_MAX`]) and queues
//! meanwhile. UDP is fire and forget, like netconsole itself: a burst (a boot log, a capture
//! file) can overflow the server's receive buffer without anyone being told. Use TCP when every
//! record matters.

use std::fmt::{self, Write as _};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs as _};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Datelike as _, Utc};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::mpsc;

use super::Sink;
use super::drops::{QueueLedger, log_stopped};
use super::worker::{Worker, WorkerThread};
use crate::netconsole::{Event, LossKind, Lost, Malformed, Priority, Rebooted, Record};
use crate::notice::{HookOutcome, Notice};

/// The port when the URL gives none: 514, syslog's UDP port (RFC 5426). RFC 6587 assigns no TCP
/// port, but 514/tcp is what rsyslog and syslog-ng listen on for plain TCP by convention (6514
/// is syslog over TLS, which this does not speak).
pub const DEFAULT_PORT: u16 = 514;
/// Messages queued per forwarder, waiting for the socket, before new ones are dropped and
/// counted: 10,000 (a kernel's whole boot log is a few thousand records; at most
/// [`MAX_MESSAGE_BYTES`] each, about 80 MiB in the worst case, usually a few MiB).
pub const QUEUE_MESSAGES: usize = 10_000;
/// First wait before reconnecting after a failed connection: 200 ms, doubled after every further
/// failure up to [`RECONNECT_MAX`].
pub const RECONNECT_MIN: Duration = Duration::from_millis(200);
/// Longest wait between reconnection attempts: 30 s.
pub const RECONNECT_MAX: Duration = Duration::from_secs(30);
/// How long one TCP connection attempt may take: 5 s.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long [`Forwarder::close`] lets the worker deliver what is still queued: 2 s. What is left
/// then is counted as dropped.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// Largest message, header included: 8192 bytes, rsyslog's default `maxMessageSize`; longer MSGs
/// are cut (at a character boundary) and marked `truncated="ORIGINAL_BYTES"`. Kernel records are
/// far shorter (`LOG_LINE_MAX`, 1 KiB less a prefix, `kernel/printk/printk.c`); this bounds
/// malformed payloads.
pub const MAX_MESSAGE_BYTES: usize = 8192;
/// Largest write the TCP worker gathers from the queue at once: 64 KiB.
pub const TCP_BATCH_BYTES: usize = 64 * 1024;
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

/// How to reach the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// One datagram per message (RFC 5426).
    Udp,
    /// A stream of octet-counted messages (RFC 6587).
    Tcp,
}

impl Transport {
    fn scheme(self) -> &'static str {
        match self {
            Self::Udp => "syslog+udp",
            Self::Tcp => "syslog+tcp",
        }
    }
}

/// The server's host as written in the URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// An IPv4 address, or an IPv6 address written in brackets.
    Ip(IpAddr),
    /// A name, resolved once when forwarding starts.
    Name(String),
}

/// `syslog+udp://HOST[:PORT]` or `syslog+tcp://HOST[:PORT]`; HOST is an IPv4 address, an IPv6
/// address in brackets, or a name (resolved when forwarding starts); PORT defaults to
/// [`DEFAULT_PORT`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardUrl {
    /// UDP or TCP.
    pub transport: Transport,
    /// The server.
    pub host: Host,
    /// The server's port.
    pub port: u16,
}

impl fmt::Display for ForwardUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://", self.transport.scheme())?;
        match &self.host {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]")?,
            Host::Ip(IpAddr::V4(ip)) => write!(f, "{ip}")?,
            Host::Name(name) => f.write_str(name)?,
        }
        write!(f, ":{}", self.port)
    }
}

/// Why a forwarding URL or forwarder is not usable.
#[derive(Debug, thiserror::Error)]
pub enum SyslogError {
    /// The URL is not of a supported form.
    #[error(
        "bad --forward URL {url:?}: {reason}; expected syslog+udp://HOST[:PORT] or \
         syslog+tcp://HOST[:PORT] (IPv6 in brackets, default port {DEFAULT_PORT})"
    )]
    BadUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The host name does not resolve.
    #[error("--forward {url}: cannot resolve the host name (check it, or give an IP address)")]
    Resolve {
        /// The URL.
        url: String,
        /// The resolver's error.
        #[source]
        source: io::Error,
    },
    /// The host name resolved to no address.
    #[error("--forward {url}: the host name has no address")]
    NoAddress {
        /// The URL.
        url: String,
    },
    /// The worker thread or its runtime could not be started.
    #[error("--forward {url}: cannot start the forwarding thread")]
    Worker {
        /// The URL.
        url: String,
        /// Why.
        #[source]
        source: io::Error,
    },
}

impl FromStr for ForwardUrl {
    type Err = SyslogError;
    fn from_str(url: &str) -> Result<Self, Self::Err> {
        let bad = |reason| SyslogError::BadUrl {
            url: url.to_owned(),
            reason,
        };
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| bad("no scheme (`syslog+udp://` or `syslog+tcp://`)"))?;
        let transport = if scheme.eq_ignore_ascii_case("syslog+udp") {
            Transport::Udp
        } else if scheme.eq_ignore_ascii_case("syslog+tcp") {
            Transport::Tcp
        } else {
            return Err(bad("unknown scheme"));
        };
        // Only an authority: a path, query or user name would be silently ignored otherwise.
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains(['/', '?', '#', '@']) {
            return Err(bad("only HOST[:PORT] may follow the scheme"));
        }
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let (ip, after) = bracketed
                .split_once(']')
                .ok_or_else(|| bad("`[` without `]`"))?;
            let ip: Ipv6Addr = ip.parse().map_err(|_| bad("not an IPv6 address in `[]`"))?;
            let port = match after {
                "" => None,
                _ => Some(
                    after
                        .strip_prefix(':')
                        .ok_or_else(|| bad("unexpected text after `]`"))?,
                ),
            };
            (Host::Ip(IpAddr::V6(ip)), port)
        } else {
            let (host, port) = match authority.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            };
            if port.is_some_and(|p| p.contains(':')) {
                return Err(bad("an IPv6 address must be in brackets, `[::1]:514`"));
            }
            (
                parse_host(host).ok_or_else(|| bad("not an IPv4 address or host name"))?,
                port,
            )
        };
        let port = match port {
            None => DEFAULT_PORT,
            Some(p) => match p.parse::<u16>() {
                Ok(0) | Err(_) => return Err(bad("the port must be a number from 1 to 65535")),
                Ok(p) => p,
            },
        };
        Ok(Self {
            transport,
            host,
            port,
        })
    }
}

/// An IPv4 address or a DNS name (letters, digits, `-`, `_`, dot-separated labels).
fn parse_host(host: &str) -> Option<Host> {
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return Some(Host::Ip(IpAddr::V4(ip)));
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    let name = host.strip_suffix('.').unwrap_or(host);
    // All digits and dots would be a mistyped IPv4 address, not a name.
    let numeric = name.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    (name.len() <= 253 && !numeric && name.split('.').all(label_ok))
        .then(|| Host::Name(host.to_owned()))
}

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
            match hook.outcome {
                HookOutcome::Skipped(why) => {
                    m.param("action", "skipped");
                    m.param("reason", why.as_str());
                    let _ = write!(m.msg, "panic hook skipped ({})", why.describe());
                }
                HookOutcome::Late { waited } => {
                    m.param("action", "late");
                    m.param("waited_ms", waited.as_millis());
                    let _ = write!(
                        m.msg,
                        "panic hook late (waited {:.3} s for a slot)",
                        waited.as_secs_f64()
                    );
                }
                HookOutcome::TimedOut { after } => {
                    m.param("action", "timeout");
                    m.param("after_s", after.as_secs());
                    let _ = write!(
                        m.msg,
                        "panic hook timed out after {} s; killed",
                        after.as_secs()
                    );
                }
            }
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
            c if c.is_control() || super::escape::is_invisible(c) => {
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

// ---------------------------------------------------------------------------------------------
// Delivery
// ---------------------------------------------------------------------------------------------

/// Counters shared with the worker.
#[derive(Debug, Default)]
struct Counters {
    /// Messages handed to the socket (for TCP: written to the kernel's send buffer).
    sent: AtomicU64,
    /// Messages taken from the queue that could not be sent.
    failed: AtomicU64,
    /// Transport errors: failed connections, failed sends, connections lost.
    errors: AtomicU64,
}

/// A snapshot of one forwarder's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ForwardStats {
    /// Messages handed to the socket: for TCP, written to the kernel's send buffer; for UDP,
    /// sent as a datagram. Neither proves that the server got them.
    pub sent: u64,
    /// Messages that will never be sent: queue full, send failed, or still queued when the
    /// shutdown grace ran out.
    pub dropped: u64,
    /// Messages waiting in the queue (or being written).
    pub queued: u64,
    /// Transport errors (failed connections and sends, lost connections).
    pub errors: u64,
}

/// Forwards events to one syslog server from a worker thread (see the module documentation).
pub struct Forwarder {
    url: ForwardUrl,
    worker: Option<Worker<String>>,
    counters: Arc<Counters>,
    /// What the queue took, refused and gave up on.
    ledger: QueueLedger,
    /// Drops not yet told in a `forward_lost` notice or report.
    drops: super::drops::ForwardDrops,
}

impl Forwarder {
    /// Resolves the server's address and starts the worker thread. Needs no runtime.
    ///
    /// # Errors
    /// [`SyslogError`] when the name does not resolve or the thread cannot start.
    pub fn start(url: &ForwardUrl) -> Result<Self, SyslogError> {
        Self::start_with(url, QUEUE_MESSAGES, SHUTDOWN_GRACE)
    }

    fn start_with(url: &ForwardUrl, queue: usize, grace: Duration) -> Result<Self, SyslogError> {
        let addrs = resolve(url)?;
        let worker_error = |source| SyslogError::Worker {
            url: url.to_string(),
            source,
        };
        let (queue_tx, queue_rx) = mpsc::channel(queue);
        let counters = Arc::new(Counters::default());
        let task = Task {
            url: url.to_string(),
            transport: url.transport,
            addrs,
            counters: Arc::clone(&counters),
        };
        let thread = WorkerThread::spawn("netcon-forward", grace, move || async move {
            let mut queue = queue_rx;
            task.serve(&mut queue).await;
        })
        .map_err(worker_error)?;
        tracing::debug!(url = %url, "forwarding");
        Ok(Self {
            url: url.clone(),
            worker: Some(Worker {
                queue: queue_tx,
                thread,
            }),
            counters,
            ledger: QueueLedger::default(),
            drops: super::drops::ForwardDrops::new(url.to_string()),
        })
    }

    /// The counters so far.
    #[must_use]
    pub fn counters(&self) -> ForwardStats {
        let sent = self.counters.sent.load(Ordering::Relaxed);
        let failed = self.counters.failed.load(Ordering::Relaxed);
        ForwardStats {
            sent,
            dropped: self.ledger.dropped(failed),
            queued: self.ledger.queued(sent, failed),
            errors: self.counters.errors.load(Ordering::Relaxed),
        }
    }

    /// Stops taking events and gives the worker [`SHUTDOWN_GRACE`] to deliver what is queued;
    /// what is left is counted as dropped. Blocks the calling thread for at most about that
    /// long. Called on drop; calling it again does nothing.
    pub fn close(&mut self) {
        let Some(worker) = self.worker.take() else {
            return;
        };
        worker.stop();
        self.ledger.abandoned = self.counters().queued;
        self.drops.closed(self.ledger.abandoned);
        let stats = self.counters();
        log_stopped(
            "forwarding",
            &self.url,
            stats.sent,
            stats.dropped,
            stats.errors,
        );
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.close();
    }
}

impl Sink for Forwarder {
    fn close(&mut self) {
        Forwarder::close(self);
    }

    fn event(&mut self, event: &Event) {
        if let Some(message) = format_event(event) {
            self.enqueue(message);
        }
    }

    fn notice(&mut self, notice: &Notice) {
        // Its own drops it reports once there is room again (see `enqueue`).
        if !self.drops.is_own(notice) {
            self.enqueue(format_notice(notice));
        }
    }

    fn take_notices(&mut self, out: &mut Vec<Notice>) {
        self.drops.take_notice(Instant::now(), out);
    }

    fn poll_at(&self) -> Option<Instant> {
        self.drops.poll_at()
    }

    fn counters(&self, out: &mut Vec<super::SinkCounter>) {
        use super::SinkCounter;
        let s = Forwarder::counters(self);
        let url = self.url.to_string();
        out.extend([
            SinkCounter::total(
                "forward_sent",
                "Syslog messages handed to the socket.",
                s.sent,
            )
            .of("url", url.clone()),
            SinkCounter::total(
                "forward_dropped",
                "Syslog messages that will never be sent (queue full, send failed, shutdown).",
                s.dropped,
            )
            .of("url", url.clone()),
            SinkCounter::gauge(
                "forward_queued",
                "Syslog messages waiting in the queue.",
                s.queued,
            )
            .of("url", url.clone()),
            SinkCounter::total(
                "forward_errors",
                "Syslog transport errors (failed connections and sends, lost connections).",
                s.errors,
            )
            .of("url", url),
        ]);
    }
}

impl Forwarder {
    /// Queues one message for the worker, or counts it as dropped. While drops wait for their
    /// report, the report goes first (and nothing else until it fits), so that it follows the
    /// gap in the server's log.
    fn enqueue(&mut self, message: String) {
        if self.drops.reporting() {
            self.queue_report();
        }
        if self.drops.reporting() || !self.try_queue(message) {
            self.ledger.refused += 1;
            if !self.drops.reporting() {
                tracing::warn!(
                    url = %self.url,
                    queue = QUEUE_MESSAGES,
                    "dropping messages to forward: the queue is full (or the forwarding thread is gone)"
                );
            }
            self.drops.dropped(Utc::now());
        }
    }

    /// Queues the report of the drops so far, if it fits.
    fn queue_report(&mut self) {
        let Some(report) = self.drops.report() else {
            return;
        };
        if self.try_queue(format_notice(&report)) {
            if let Notice::ForwardLost(lost) = &report {
                tracing::info!(
                    url = %self.url,
                    dropped = lost.messages,
                    "forwarding queue has room again"
                );
            }
            self.drops.reported();
        }
    }

    /// Hands one message to the worker; `false` when the queue is full or the worker gone.
    fn try_queue(&mut self, message: String) -> bool {
        let queued = self
            .worker
            .as_ref()
            .is_some_and(|worker| worker.queue.try_send(message).is_ok());
        if queued {
            self.ledger.accepted += 1;
        }
        queued
    }
}

/// The server's addresses: the IP as given, or what the name resolves to now.
fn resolve(url: &ForwardUrl) -> Result<Vec<SocketAddr>, SyslogError> {
    match &url.host {
        Host::Ip(ip) => Ok(vec![SocketAddr::new(*ip, url.port)]),
        Host::Name(name) => {
            let addrs: Vec<SocketAddr> = (name.as_str(), url.port)
                .to_socket_addrs()
                .map_err(|source| SyslogError::Resolve {
                    url: url.to_string(),
                    source,
                })?
                .collect();
            if addrs.is_empty() {
                return Err(SyslogError::NoAddress {
                    url: url.to_string(),
                });
            }
            Ok(addrs)
        }
    }
}

/// Exponential backoff between [`RECONNECT_MIN`] and [`RECONNECT_MAX`].
#[derive(Debug)]
struct Backoff {
    next: Duration,
}

impl Backoff {
    fn new() -> Self {
        Self {
            next: RECONNECT_MIN,
        }
    }

    fn reset(&mut self) {
        self.next = RECONNECT_MIN;
    }

    /// The wait before the next attempt; doubles the one after it.
    fn step(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(RECONNECT_MAX);
        wait
    }
}

/// Why sending stopped.
enum Outcome {
    /// The queue is closed and empty: all done.
    QueueClosed,
    /// The connection broke: reconnect.
    Broken,
}

/// An open transport.
enum Link {
    Udp(UdpSocket),
    Tcp(TcpStream),
}

/// What the worker thread runs.
struct Task {
    url: String,
    transport: Transport,
    addrs: Vec<SocketAddr>,
    counters: Arc<Counters>,
}

impl Task {
    /// Connects (again and again, with backoff) and delivers until the queue is closed and
    /// empty.
    async fn serve(&self, queue: &mut mpsc::Receiver<String>) {
        let mut backoff = Backoff::new();
        // Whether a failure was logged since the last connection: log changes, not every
        // retry.
        let mut down = false;
        loop {
            let link = match self.connect().await {
                Ok(link) => link,
                Err(error) => {
                    self.counters.errors.fetch_add(1, Ordering::Relaxed);
                    let wait = backoff.step();
                    if down {
                        tracing::debug!(url = %self.url, %error, ?wait, "still cannot connect");
                    } else {
                        tracing::warn!(
                            url = %self.url,
                            %error,
                            queue = QUEUE_MESSAGES,
                            "cannot connect to the syslog server; queueing and retrying"
                        );
                    }
                    down = true;
                    tokio::time::sleep(wait).await;
                    continue;
                }
            };
            if down {
                tracing::info!(url = %self.url, "connected to the syslog server again");
            }
            backoff.reset();
            let outcome = match link {
                Link::Udp(socket) => self.send_udp(&socket, queue).await,
                Link::Tcp(stream) => self.send_tcp(stream, queue).await,
            };
            match outcome {
                Outcome::QueueClosed => return,
                // Logged where it broke; the next connection is logged as a recovery.
                Outcome::Broken => down = true,
            }
        }
    }

    /// Sends one datagram per message until the queue is closed. UDP has no connection to
    /// lose: a failed send loses that message only.
    async fn send_udp(&self, socket: &UdpSocket, queue: &mut mpsc::Receiver<String>) -> Outcome {
        let mut failing = false;
        while let Some(message) = queue.recv().await {
            match send_datagram(socket, message.as_bytes()).await {
                Ok(()) => {
                    self.counters.sent.fetch_add(1, Ordering::Relaxed);
                    if failing {
                        failing = false;
                        tracing::info!(url = %self.url, "sending to the syslog server again");
                    }
                }
                Err(error) => {
                    self.counters.failed.fetch_add(1, Ordering::Relaxed);
                    self.counters.errors.fetch_add(1, Ordering::Relaxed);
                    if !failing {
                        failing = true;
                        tracing::warn!(
                            url = %self.url,
                            %error,
                            "cannot send to the syslog server; dropping messages"
                        );
                    }
                }
            }
        }
        Outcome::QueueClosed
    }

    /// Writes octet-counted messages, several per write when they are queued, until the queue
    /// is closed (then closes the connection cleanly) or the connection breaks.
    async fn send_tcp(&self, mut stream: TcpStream, queue: &mut mpsc::Receiver<String>) -> Outcome {
        let mut batch = Vec::with_capacity(TCP_BATCH_BYTES);
        let mut probe = [0u8; 64];
        loop {
            let first = tokio::select! {
                // Checked first: a message written after the server closed would be lost
                // without an error, so a close must be noticed before the next write.
                biased;
                read = stream.read(&mut probe) => {
                    // A syslog server never talks: readable means closed or broken (and any
                    // bytes it does send mean nothing here).
                    if matches!(read, Ok(n) if n > 0) {
                        continue;
                    }
                    self.counters.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        url = %self.url,
                        "the syslog server closed the connection; reconnecting"
                    );
                    return Outcome::Broken;
                }
                message = queue.recv() => message,
            };
            let Some(first) = first else {
                let _ = stream.shutdown().await;
                return Outcome::QueueClosed;
            };
            batch.clear();
            frame_octet_counted(first.as_bytes(), &mut batch);
            let mut count = 1;
            while batch.len() < TCP_BATCH_BYTES {
                let Ok(message) = queue.try_recv() else {
                    break;
                };
                frame_octet_counted(message.as_bytes(), &mut batch);
                count += 1;
            }
            if let Err(error) = stream.write_all(&batch).await {
                // Part of the batch may have arrived; none of it is counted as sent.
                self.counters.failed.fetch_add(count, Ordering::Relaxed);
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    url = %self.url,
                    %error,
                    "lost the connection to the syslog server; reconnecting"
                );
                return Outcome::Broken;
            }
            self.counters.sent.fetch_add(count, Ordering::Relaxed);
        }
    }

    async fn connect(&self) -> io::Result<Link> {
        match self.transport {
            Transport::Udp => {
                let &target = self
                    .addrs
                    .first()
                    .ok_or_else(|| io::Error::from(io::ErrorKind::AddrNotAvailable))?;
                let local: SocketAddr = match target {
                    SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
                    SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
                };
                let socket = UdpSocket::bind(local).await?;
                // Connected, so that the kernel reports the server's ICMP errors on later sends.
                socket.connect(target).await?;
                Ok(Link::Udp(socket))
            }
            Transport::Tcp => {
                let stream =
                    tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&self.addrs[..]))
                        .await
                        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
                // Batching is done here; a crash's last lines should not wait for Nagle.
                stream.set_nodelay(true)?;
                Ok(Link::Tcp(stream))
            }
        }
    }
}

/// Sends one datagram. A connected UDP socket reports an earlier datagram's ICMP "port
/// unreachable" on the next send, which is then not sent: try that one once more.
async fn send_datagram(socket: &UdpSocket, message: &[u8]) -> io::Result<()> {
    match socket.send(message).await {
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            socket.send(message).await.map(drop)
        }
        other => other.map(drop),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;
    use std::net::{Ipv6Addr, TcpListener};
    use std::time::Instant;

    use super::*;
    use crate::netconsole::{
        Caller, DecodeError, Duplicate, ExtendedError, Format, PanicKind, PanicMark,
    };

    /// Deadline for anything a test waits for on loopback.
    const WAIT: Duration = Duration::from_secs(10);
    /// Grace period for tests that close a forwarder to a dead server.
    const SHORT_GRACE: Duration = Duration::from_millis(200);

    fn at() -> DateTime<Utc> {
        DateTime::from_timestamp_micros(1_795_817_754_738_593).unwrap_or_default()
    }

    fn sender() -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 77, 0, 10)), 6665)
    }

    fn record(text: &[u8]) -> Record {
        Record {
            received: at(),
            priority: Priority::from_pri(14),
            kernel_time: DateTime::from_timestamp_micros(1_795_817_754_753_542),
            ..Record::example(text)
        }
    }

    fn format_record(r: Record) -> String {
        format_event(&Event::Record(r)).expect("records are forwarded")
    }

    fn url(s: &str) -> ForwardUrl {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

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
        r.format = Format::Plain;
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

    #[test]
    fn good_urls() {
        let v4 = Host::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST));
        for (text, transport, host, port) in [
            (
                "syslog+udp://127.0.0.1:5514",
                Transport::Udp,
                v4.clone(),
                5514,
            ),
            ("syslog+tcp://127.0.0.1", Transport::Tcp, v4.clone(), 514),
            ("SYSLOG+TCP://127.0.0.1:1/", Transport::Tcp, v4, 1),
            (
                "syslog+udp://[::1]:6514",
                Transport::Udp,
                Host::Ip(IpAddr::V6(Ipv6Addr::LOCALHOST)),
                6514,
            ),
            (
                "syslog+tcp://[fe80::1]",
                Transport::Tcp,
                Host::Ip("fe80::1".parse().expect("ip")),
                514,
            ),
            (
                "syslog+tcp://logs.example.org:65535",
                Transport::Tcp,
                Host::Name("logs.example.org".into()),
                65535,
            ),
            (
                "syslog+udp://loghost",
                Transport::Udp,
                Host::Name("loghost".into()),
                514,
            ),
        ] {
            let parsed = url(text);
            assert_eq!(
                parsed,
                ForwardUrl {
                    transport,
                    host,
                    port
                },
                "{text}"
            );
            // Display gives a URL that parses back to the same thing.
            assert_eq!(url(&parsed.to_string()), parsed, "{text}");
        }
        assert_eq!(
            url("syslog+udp://[::1]").to_string(),
            "syslog+udp://[::1]:514"
        );
    }

    #[test]
    fn bad_urls() {
        for text in [
            "",
            "127.0.0.1:514",
            "udp://127.0.0.1:514",
            "syslog://127.0.0.1:514",
            "syslog+tls://127.0.0.1:6514",
            "syslog+udp://",
            "syslog+udp://:514",
            "syslog+udp://127.0.0.1:",
            "syslog+udp://127.0.0.1:0",
            "syslog+udp://127.0.0.1:65536",
            "syslog+udp://127.0.0.1:x",
            "syslog+udp://::1",
            "syslog+udp://::1:514",
            "syslog+udp://[::1",
            "syslog+udp://[::1]x",
            "syslog+udp://[127.0.0.1]:514",
            "syslog+udp://[nope]:514",
            "syslog+udp://999.1.1.1",
            "syslog+udp://host/path",
            "syslog+udp://user@host",
            "syslog+udp://host?x=1",
            "syslog+udp://bad_host!",
            "syslog+udp://-host",
            "syslog+udp://a..b",
        ] {
            let error = text.parse::<ForwardUrl>().expect_err(text);
            assert!(
                matches!(&error, SyslogError::BadUrl { url, .. } if url == text),
                "{text}: {error}"
            );
            assert!(
                error
                    .to_string()
                    .contains("expected syslog+udp://HOST[:PORT]"),
                "{error}"
            );
        }
    }

    #[test]
    fn unresolvable_name_fails_at_start() {
        let error = Forwarder::start(&url("syslog+udp://nonexistent.invalid:514"))
            .err()
            .expect("no such name");
        assert!(
            matches!(
                error,
                SyslogError::Resolve { .. } | SyslogError::NoAddress { .. }
            ),
            "{error}"
        );
    }

    /// A loopback TCP port nobody listens on (bound, then closed).
    fn dead_tcp_port() -> u16 {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        listener.local_addr().expect("addr").port()
    }

    #[test]
    fn full_queue_counts_drops_and_close_counts_what_was_left() {
        let port = dead_tcp_port();
        let mut f = Forwarder::start_with(
            &url(&format!("syslog+tcp://127.0.0.1:{port}")),
            4,
            SHORT_GRACE,
        )
        .expect("start");
        for i in 0..10 {
            f.event(&Event::Record(record(format!("m{i}").as_bytes())));
        }
        // Nothing connects, so nothing leaves the queue.
        let s = f.counters();
        assert_eq!((s.sent, s.dropped, s.queued), (0, 6, 4), "{s:?}");
        let mut line = String::new();
        f.stats(&mut line);
        assert_eq!(
            line,
            format!(
                " forward_sent=0 forward_dropped=6 forward_queued=4 forward_errors={}",
                s.errors
            )
        );
        let lost = |f: &mut Forwarder| {
            let mut notices = Vec::new();
            f.take_notices(&mut notices);
            notices
                .iter()
                .map(|n| match n {
                    Notice::ForwardLost(l) => l.messages,
                    other => panic!("{other:?}"),
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(
            lost(&mut f),
            [6],
            "the drops are a notice in the output stream"
        );
        let started = Instant::now();
        f.close();
        assert!(started.elapsed() < SHORT_GRACE + Duration::from_secs(2));
        let s = f.counters();
        assert_eq!((s.sent, s.dropped, s.queued), (0, 10, 0), "{s:?}");
        assert_eq!(lost(&mut f), [4], "and what was left at close, at once");
        assert!(s.errors >= 1, "{s:?}");
        // Closed: further events are counted, not queued.
        f.event(&Event::Record(record(b"late")));
        assert_eq!(f.counters().dropped, 11);
    }

    #[test]
    fn udp_sends_one_datagram_per_message() {
        let server = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        server.set_read_timeout(Some(WAIT)).expect("timeout");
        let port = server.local_addr().expect("addr").port();
        let mut f =
            Forwarder::start(&url(&format!("syslog+udp://127.0.0.1:{port}"))).expect("start");
        let records: Vec<Record> = (0..3)
            .map(|i| record(format!("m{i}\nline").as_bytes()))
            .collect();
        for r in &records {
            f.event(&Event::Record(r.clone()));
        }
        let mut buf = [0u8; 2 * MAX_MESSAGE_BYTES];
        for r in records {
            let n = server.recv(&mut buf).expect("datagram");
            assert_eq!(&buf[..n], format_record(r).as_bytes());
        }
        f.close();
        let s = f.counters();
        assert_eq!(
            (s.sent, s.dropped, s.queued, s.errors),
            (3, 0, 0, 0),
            "{s:?}"
        );
    }

    /// Reads octet-counted frames from `stream` until it closes (or `WAIT` passes).
    fn read_frames(mut stream: std::net::TcpStream) -> Vec<String> {
        stream.set_read_timeout(Some(WAIT)).expect("timeout");
        let mut bytes = Vec::new();
        let _ = stream.read_to_end(&mut bytes);
        let mut frames = Vec::new();
        let mut rest = bytes.as_slice();
        while !rest.is_empty() {
            let space = rest.iter().position(|&b| b == b' ').expect("LEN SP");
            let len: usize = std::str::from_utf8(&rest[..space])
                .expect("ascii")
                .parse()
                .expect("LEN");
            let body = &rest[space + 1..space + 1 + len];
            frames.push(String::from_utf8(body.to_vec()).expect("utf-8"));
            rest = &rest[space + 1 + len..];
        }
        frames
    }

    #[test]
    fn tcp_frames_by_octet_counting_and_delivers_the_queue_on_close() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let server = std::thread::spawn(move || read_frames(listener.accept().expect("accept").0));
        let mut f =
            Forwarder::start(&url(&format!("syslog+tcp://127.0.0.1:{port}"))).expect("start");
        let records: Vec<Record> = (0..500)
            .map(|i| record(format!("m{i}\nsecond line é").as_bytes()))
            .collect();
        for r in &records {
            f.event(&Event::Record(r.clone()));
        }
        // Close right away: delivery of the queue is close's job.
        f.close();
        let frames = server.join().expect("server");
        let expected: Vec<String> = records.into_iter().map(format_record).collect();
        assert_eq!(frames, expected);
        let s = f.counters();
        assert_eq!((s.sent, s.dropped, s.queued), (500, 0, 0), "{s:?}");
    }

    /// The next connection to `listener`, waiting at most `timeout`.
    fn accept_within(listener: &TcpListener, timeout: Duration) -> std::net::TcpStream {
        listener.set_nonblocking(true).expect("nonblocking");
        let deadline = Instant::now() + timeout;
        loop {
            match listener.accept() {
                Ok((stream, _)) => {
                    stream.set_nonblocking(false).expect("blocking");
                    return stream;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("no connection within {timeout:?}: {e}"),
            }
        }
    }

    #[test]
    fn tcp_reconnects_after_the_server_closes() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let mut f =
            Forwarder::start(&url(&format!("syslog+tcp://127.0.0.1:{port}"))).expect("start");
        f.event(&Event::Record(record(b"first")));
        let (mut first, _) = listener.accept().expect("accept");
        first.set_read_timeout(Some(WAIT)).expect("timeout");
        let expected = format_record(record(b"first"));
        let mut buf = vec![0; expected.len() + 4];
        first.read_exact(&mut buf).expect("first frame");
        assert!(buf.ends_with(expected.as_bytes()));
        drop(first);
        // The worker notices the close while idle and reconnects at once.
        let second = accept_within(&listener, WAIT);
        f.event(&Event::Record(record(b"second")));
        f.close();
        assert_eq!(read_frames(second), vec![format_record(record(b"second"))]);
        let s = f.counters();
        assert_eq!((s.sent, s.dropped), (2, 0), "{s:?}");
        assert!(s.errors >= 1, "{s:?}");
    }

    #[test]
    fn backoff_doubles_up_to_the_maximum() {
        let mut b = Backoff::new();
        assert_eq!(b.step(), RECONNECT_MIN);
        assert_eq!(b.step(), RECONNECT_MIN * 2);
        for _ in 0..20 {
            b.step();
        }
        assert_eq!(b.step(), RECONNECT_MAX);
        b.reset();
        assert_eq!(b.step(), RECONNECT_MIN);
    }
}
