//! `--forward nats://HOST[:PORT][,HOST[:PORT]...][/PREFIX]`: every record and event to NATS, so
//! that a fleet of collectors (one per segment, two for redundancy) can be watched in one place.
//!
//! - Each record goes out as its `--format json` object (one message, no trailing newline) on
//!   `PREFIX.records.<sender>`, each event (loss, reboot, malformed datagram) on
//!   `PREFIX.events.<sender>`; `<sender>` is the sender's IP address with `.` and `:` written as
//!   `_` ([`sender_token`]), because `.` separates subject tokens. Duplicates are not sent.
//! - Every message carries a `Nats-Msg-Id` computed from the datagram alone ([`message_id`]):
//!   two collectors that hear the same record compute the same id, and a `JetStream` stream keeps
//!   the first copy that arrives within its duplicate window and acknowledges the other as a
//!   duplicate. Extended records are identified by sender, kernel timestamp and sequence number;
//!   plain ones (which carry neither) by sender and a hash of the text, so the same plain line
//!   repeated by one sender within the window is stored once.
//! - With `--nats-stream NAME` the forwarder makes sure a stream of that name covers `PREFIX.>`
//!   (creates it with `--nats-replicas` replicas and a [`DUPLICATE_WINDOW`] when missing, adds
//!   the subjects or widens the window when it exists) and publishes with acknowledgements: a
//!   message leaves the queue only when the stream acknowledged it, and is published again
//!   (same id, so stored once) when the acknowledgement does not come. Without it, messages are
//!   published with core NATS: whoever subscribes at that moment gets them, nobody else.
//! - The collector's own notices go out as their `--format json` object with a `collector` field
//!   ([`notice_payload`]), on [`notice_subject`]: `capture_lost` and `forward_lost` on
//!   `PREFIX.collector.<host>`, panic hook notices on the sender's `PREFIX.events.<sender>`.
//!   Their id is unique to this collector and run (`HOST/START.PID/KIND/N`), not computed from
//!   a datagram: each collector loses its own frames and runs its own hooks, so two redundant
//!   collectors' notices are different facts and both are stored; a retried publish still is
//!   stored once.
//!
//! Delivery never slows capture: [`NatsForwarder::event`] clones the event and `try_send`s it
//! into a bounded queue ([`QUEUE_MESSAGES`], and every queued byte charged to the collector's
//! [`MemoryBudget`]; the worker formats it); what does not fit is dropped and counted, told in
//! `forward_lost` notices in the collector's output ([`super::drops`]), and once there is room
//! again a `forward_lost` event for the whole gap goes out on `PREFIX.collector.<host>`. A
//! worker thread with its own small tokio runtime ([`super::worker`]) owns the connection: the client reconnects on its own, with backoff ([`RECONNECT_MIN`] to
//! [`RECONNECT_MAX`]), to any server of the list, and the worker holds messages in the queue
//! while no server is connected. At exit the worker gets [`SHUTDOWN_GRACE`] to deliver what is
//! queued; what is left is counted as dropped.

use std::collections::VecDeque;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures_util::{FutureExt as _, StreamExt as _, future::BoxFuture, stream::FuturesUnordered};
use tokio::sync::mpsc;

use super::Sink;
use super::drops::{ForwardDrops, QueueLedger, log_stopped};
use super::worker::{Worker, WorkerThread};
use crate::budget::MemoryBudget;
use crate::netconsole::{Event, Format, LossKind};
use crate::notice::{HookOutcome, Notice};

/// The port when the URL gives none: 4222, NATS's client port.
pub const DEFAULT_PORT: u16 = 4222;
/// The subject prefix when the URL gives none.
pub const DEFAULT_PREFIX: &str = "netcon";
/// Messages queued per forwarder before new ones are dropped and counted: 10,000 (a kernel's
/// whole boot log is a few thousand records). Their bytes count against the memory budget too.
pub const QUEUE_MESSAGES: usize = 10_000;
/// `JetStream` publishes waiting for their acknowledgement at once: 256. Enough to keep a link
/// with a few milliseconds of round trip busy at 100k records/s; each one is held until acked.
pub const ACK_WINDOW: usize = 256;
/// How long to wait for a `JetStream` acknowledgement before publishing again: 5 s.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// First wait before reconnecting (or retrying a failed publish): 200 ms, doubled after every
/// further failure up to [`RECONNECT_MAX`].
pub const RECONNECT_MIN: Duration = Duration::from_millis(200);
/// Longest wait between reconnection attempts: 10 s (a NATS server restarts in about a second;
/// the queue fills in seconds at high rates, so the wait must stay short).
pub const RECONNECT_MAX: Duration = Duration::from_secs(10);
/// How long one connection attempt may take: 5 s.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the worker looks whether the client is connected again while it holds messages.
const CONNECTED_POLL: Duration = Duration::from_millis(50);
/// How long [`NatsForwarder::close`] lets the worker deliver (and get acknowledged) what is
/// still queued: 5 s, one [`ACK_TIMEOUT`]. What is left then is counted as dropped.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// The duplicate window of a stream created by `--nats-stream`, and the least accepted of an
/// existing one: 2 minutes. Two collectors hear a datagram within microseconds of each other,
/// but one of them may be reconnecting or retrying: the window must cover that delay.
pub const DUPLICATE_WINDOW: Duration = Duration::from_mins(2);
/// What a queued message is charged beyond its bytes (subject, id, queue slot), bytes.
const QUEUED_OVERHEAD: usize = 96;

/// Why a NATS URL or forwarder is not usable.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    /// The URL is not of a supported form.
    #[error(
        "bad NATS URL {url:?}: {reason}; expected nats://HOST[:PORT][,HOST[:PORT]...][/PREFIX] \
         (or tls://; IPv6 in brackets, default port {DEFAULT_PORT}, default prefix \
         {DEFAULT_PREFIX})"
    )]
    BadUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// `--nats-stream` names no valid stream.
    #[error("bad --nats-stream {name:?}: a stream name is letters, digits, `-` and `_`")]
    BadStreamName {
        /// The name as given.
        name: String,
    },
    /// The worker thread or its runtime could not be started.
    #[error("--forward {url}: cannot start the forwarding thread")]
    Worker {
        /// The URL.
        url: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// `nats://HOST[:PORT][,HOST[:PORT]...][/PREFIX]` (or `tls://...`): the servers of one cluster
/// and the subject prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsUrl {
    /// TLS (`tls://`) or plain (`nats://`).
    pub tls: bool,
    /// `HOST:PORT` of each server, IPv6 in brackets.
    pub servers: Vec<String>,
    /// Subject prefix, e.g. `netcon` or `site1.netcon`.
    pub prefix: String,
}

impl fmt::Display for NatsUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "tls" } else { "nats" };
        write!(f, "{scheme}://{}/{}", self.servers.join(","), self.prefix)
    }
}

impl FromStr for NatsUrl {
    type Err = NatsError;
    fn from_str(url: &str) -> Result<Self, Self::Err> {
        let bad = |reason| NatsError::BadUrl {
            url: url.to_owned(),
            reason,
        };
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| bad("no scheme (`nats://` or `tls://`)"))?;
        let tls = if scheme.eq_ignore_ascii_case("nats") {
            false
        } else if scheme.eq_ignore_ascii_case("tls") {
            true
        } else {
            return Err(bad("unknown scheme"));
        };
        let (hosts, prefix) = match rest.split_once('/') {
            Some((hosts, "")) => (hosts, DEFAULT_PREFIX),
            Some((hosts, prefix)) => (hosts, prefix),
            None => (rest, DEFAULT_PREFIX),
        };
        if hosts.contains(['?', '#', '@']) {
            return Err(bad("only HOST[:PORT] may name a server"));
        }
        let servers = hosts
            .split(',')
            .map(|host| parse_server(host).map_err(bad))
            .collect::<Result<Vec<_>, _>>()?;
        if !valid_prefix(prefix) {
            return Err(bad(
                "the prefix is dot-separated tokens of letters, digits, `-` and `_`",
            ));
        }
        Ok(Self {
            tls,
            servers,
            prefix: prefix.to_owned(),
        })
    }
}

/// `HOST[:PORT]` to `HOST:PORT`.
fn parse_server(server: &str) -> Result<String, &'static str> {
    let (host, port) = if let Some(bracketed) = server.strip_prefix('[') {
        let (ip, after) = bracketed.split_once(']').ok_or("`[` without `]`")?;
        ip.parse::<Ipv6Addr>()
            .map_err(|_| "not an IPv6 address in `[]`")?;
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':').ok_or("unexpected text after `]`")?),
        };
        (format!("[{ip}]"), port)
    } else {
        let (host, port) = match server.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (server, None),
        };
        if port.is_some_and(|p| p.contains(':')) {
            return Err("an IPv6 address must be in brackets, `[::1]:4222`");
        }
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if host.len() > 253 || !host.split('.').all(label_ok) {
            return Err("not an IPv4 address or host name");
        }
        (host.to_owned(), port)
    };
    let port = match port {
        None => DEFAULT_PORT,
        Some(p) => match p.parse::<u16>() {
            Ok(0) | Err(_) => return Err("the port must be a number from 1 to 65535"),
            Ok(p) => p,
        },
    };
    Ok(format!("{host}:{port}"))
}

/// Subject tokens: no wildcards, no empty tokens, nothing a subject may not hold.
fn valid_prefix(prefix: &str) -> bool {
    prefix.len() <= 200
        && prefix.split('.').all(|token| {
            !token.is_empty()
                && token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// A stream name as `JetStream` accepts it (no `.`, `*`, `>`, whitespace or path separators).
///
/// # Errors
/// [`NatsError::BadStreamName`].
pub fn parse_stream_name(name: &str) -> Result<String, NatsError> {
    if !name.is_empty()
        && name.len() <= 200
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        Ok(name.to_owned())
    } else {
        Err(NatsError::BadStreamName {
            name: name.to_owned(),
        })
    }
}

/// `JetStream` delivery: the stream to publish into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamOptions {
    /// The stream's name.
    pub name: String,
    /// Its replicas when it has to be created.
    pub replicas: usize,
}

/// Everything about NATS forwarding, resolved from the command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatsForwarding {
    /// Where to publish (one forwarder each).
    pub urls: Vec<NatsUrl>,
    /// Publish into this stream with acknowledgements (else core NATS).
    pub stream: Option<StreamOptions>,
}

// ---------------------------------------------------------------------------------------------
// Subjects and ids
// ---------------------------------------------------------------------------------------------

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
            (Format::Extended, Some(seq)) => format!(
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
fn host_name() -> String {
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
fn notice_kind(notice: &Notice) -> &'static str {
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
    super::json::write_notice(notice, &mut line);
    let object = line.trim_end();
    match object.strip_suffix('}') {
        Some(open) if open.starts_with('{') => {
            let host = serde_json::Value::from(host);
            format!("{open},\"collector\":{host}}}")
        }
        _ => object.to_owned(),
    }
}

// ---------------------------------------------------------------------------------------------
// Delivery
// ---------------------------------------------------------------------------------------------

/// One message waiting for the server. Its bytes stay charged to the budget until it is
/// dropped: sent, given up, or left behind at exit, wherever that happens.
#[derive(Debug)]
struct Queued {
    subject: String,
    id: Option<String>,
    payload: Bytes,
    /// Held for its `Drop`.
    _charge: Charge,
}

/// What the capture thread hands the worker: an event, formatted there (JSON, subject, id) so
/// that capture pays only for a clone; or a message formatted already (the collector's own).
#[derive(Debug)]
enum Outgoing {
    Event(Box<Event>, Charge),
    Message(Queued),
}

impl Outgoing {
    /// The message to publish (`None` for an event that is not forwarded).
    fn into_message(self, prefix: &str) -> Option<Queued> {
        match self {
            Self::Message(message) => Some(message),
            Self::Event(event, charge) => {
                let id = message_id(&event)?;
                let mut line = String::new();
                super::json::write_event(&event, &mut line);
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
fn queued_event_bytes(event: &Event) -> usize {
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
struct Charge {
    budget: MemoryBudget,
    bytes: usize,
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.release(self.bytes);
    }
}

/// Counters shared with the worker.
#[derive(Debug, Default)]
struct Counters {
    /// Messages the server took: acknowledged by the stream, or (core NATS) written.
    sent: AtomicU64,
    /// Of those, acknowledged as duplicates (another collector's copy came first).
    duplicates: AtomicU64,
    /// Messages taken from the queue that will never be sent (too large for the server).
    failed: AtomicU64,
    /// Publishes made again after a missing or failed acknowledgement.
    retries: AtomicU64,
    /// Errors: failed stream set-up, failed publishes, acknowledgements that did not come.
    errors: AtomicU64,
}

/// A snapshot of one forwarder's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NatsStats {
    /// Messages the server took (`JetStream`: acknowledged, duplicates included).
    pub sent: u64,
    /// Acknowledged as duplicates: another collector had sent them first.
    pub duplicates: u64,
    /// Messages that will never be sent: queue or budget full, or still queued when the
    /// shutdown grace ran out.
    pub dropped: u64,
    /// Messages queued or waiting for their acknowledgement.
    pub queued: u64,
    /// Publishes made again.
    pub retries: u64,
    /// Errors (failed publishes, missing acknowledgements, stream set-up failures).
    pub errors: u64,
}

/// Forwards events to one NATS cluster from a worker thread (see the module documentation).
pub struct NatsForwarder {
    url: NatsUrl,
    worker: Option<Worker<Outgoing>>,
    counters: Arc<Counters>,
    budget: MemoryBudget,
    /// What the queue took, refused and gave up on.
    ledger: QueueLedger,
    /// Drops not yet told in a `forward_lost` notice or report.
    drops: ForwardDrops,
    /// This machine's name, for the collector's own messages.
    host: String,
    /// This run of this forwarder (start time in microseconds and process id), for the ids of
    /// the collector's own messages.
    run: String,
    /// Counts this collector's own messages, for their ids.
    own_messages: u64,
}

impl NatsForwarder {
    /// Starts the worker thread, which connects in the background. Needs no runtime.
    ///
    /// # Errors
    /// [`NatsError::Worker`] when the thread cannot start.
    pub fn start(
        url: &NatsUrl,
        stream: Option<&StreamOptions>,
        budget: MemoryBudget,
    ) -> Result<Self, NatsError> {
        Self::start_with(url, stream, budget, QUEUE_MESSAGES, SHUTDOWN_GRACE)
    }

    fn start_with(
        url: &NatsUrl,
        stream: Option<&StreamOptions>,
        budget: MemoryBudget,
        queue: usize,
        grace: Duration,
    ) -> Result<Self, NatsError> {
        let worker_error = |source| NatsError::Worker {
            url: url.to_string(),
            source,
        };
        let (queue_tx, queue_rx) = mpsc::channel(queue);
        let counters = Arc::new(Counters::default());
        let task = Task {
            url: url.clone(),
            stream: stream.cloned(),
            counters: Arc::clone(&counters),
        };
        // Whatever is still queued when the task ends or is given up on is dropped with the
        // receiver, and its bytes given back.
        let thread = WorkerThread::spawn("netcon-nats", grace, move || task.serve(queue_rx))
            .map_err(worker_error)?;
        tracing::debug!(url = %url, "forwarding to NATS");
        Ok(Self {
            url: url.clone(),
            worker: Some(Worker {
                queue: queue_tx,
                thread,
            }),
            counters,
            budget,
            ledger: QueueLedger::default(),
            drops: ForwardDrops::new(url.to_string()),
            host: host_name(),
            run: format!(
                "{}.{}",
                chrono::Utc::now().timestamp_micros(),
                std::process::id()
            ),
            own_messages: 0,
        })
    }

    /// The counters so far.
    #[must_use]
    pub fn counters(&self) -> NatsStats {
        let sent = self.counters.sent.load(Ordering::Relaxed);
        let failed = self.counters.failed.load(Ordering::Relaxed);
        NatsStats {
            sent,
            duplicates: self.counters.duplicates.load(Ordering::Relaxed),
            dropped: self.ledger.dropped(failed),
            queued: self.ledger.queued(sent, failed),
            retries: self.counters.retries.load(Ordering::Relaxed),
            errors: self.counters.errors.load(Ordering::Relaxed),
        }
    }

    /// Charges `bytes` and queues what `outgoing` makes of the charge; `false` (nothing
    /// charged) when it does not fit.
    fn enqueue(&mut self, bytes: usize, outgoing: impl FnOnce(Charge) -> Outgoing) -> bool {
        let Some(worker) = &self.worker else {
            return false;
        };
        if !self.budget.try_charge(bytes) {
            return false;
        }
        let charge = Charge {
            budget: self.budget.clone(),
            bytes,
        };
        // A refused message is dropped here, and its charge with it.
        if worker.queue.try_send(outgoing(charge)).is_ok() {
            self.ledger.accepted += 1;
            true
        } else {
            false
        }
    }

    /// Queues the `forward_lost` report of the drops so far, if there is room now.
    fn report_drops(&mut self) {
        let Some(report) = self.drops.report() else {
            return;
        };
        if self.enqueue_notice(&report) {
            if let Notice::ForwardLost(lost) = &report {
                tracing::info!(
                    url = %self.url,
                    dropped = lost.messages,
                    "NATS forwarding queue has room again"
                );
            }
            self.drops.reported();
        }
    }

    /// Queues one of the collector's own notices (see [`notice_subject`]); `false` when it
    /// does not fit.
    fn enqueue_notice(&mut self, notice: &Notice) -> bool {
        let payload = notice_payload(notice, &self.host);
        let subject = notice_subject(&self.url.prefix, &self.host, notice);
        self.own_messages += 1;
        // Unique to this collector and run: what it noticed is its own, never merged with
        // another collector's (each loses its own frames and runs its own hooks).
        let id = format!(
            "{}/{}/{}/{}",
            self.host,
            self.run,
            notice_kind(notice),
            self.own_messages
        );
        let bytes = payload.len() + subject.len() + id.len() + QUEUED_OVERHEAD;
        self.enqueue(bytes, |charge| {
            Outgoing::Message(Queued {
                subject,
                id: Some(id),
                payload: Bytes::from(payload),
                _charge: charge,
            })
        })
    }

    /// Queues what `queue` queues, unless drops wait for their report and it does not fit
    /// first; counts a drop otherwise. The report thus comes right after the gap.
    fn offer(&mut self, dropped_at: DateTime<Utc>, queue: impl FnOnce(&mut Self) -> bool) {
        if self.drops.reporting() {
            self.report_drops();
        }
        if self.drops.reporting() || !queue(self) {
            self.ledger.refused += 1;
            if !self.drops.reporting() {
                tracing::warn!(
                    url = %self.url,
                    queue = QUEUE_MESSAGES,
                    "dropping messages to forward to NATS: the queue is full"
                );
            }
            self.drops.dropped(dropped_at);
        }
    }

    /// Stops taking events and gives the worker [`SHUTDOWN_GRACE`] to deliver what is queued;
    /// what is left is counted as dropped. Called on drop; calling it again does nothing.
    pub fn close(&mut self) {
        // A last report of drops, if it fits.
        self.report_drops();
        let Some(worker) = self.worker.take() else {
            return;
        };
        worker.stop();
        self.ledger.abandoned = self.counters().queued;
        self.drops.closed(self.ledger.abandoned);
        let stats = self.counters();
        log_stopped(
            "NATS forwarding",
            &self.url,
            stats.sent,
            stats.dropped,
            stats.errors,
        );
    }
}

impl Drop for NatsForwarder {
    fn drop(&mut self) {
        self.close();
    }
}

impl Sink for NatsForwarder {
    fn event(&mut self, event: &Event) {
        if matches!(event, Event::Duplicate(_)) {
            return;
        }
        let dropped_at = match event {
            Event::Record(r) => r.received,
            _ => Utc::now(),
        };
        self.offer(dropped_at, |this| {
            this.enqueue(queued_event_bytes(event), |charge| {
                Outgoing::Event(Box::new(event.clone()), charge)
            })
        });
    }

    fn notice(&mut self, notice: &Notice) {
        // Its own drops it reports once there is room again (see `offer`); after close there
        // is nowhere to publish.
        if self.drops.is_own(notice) || self.worker.is_none() {
            return;
        }
        self.offer(Utc::now(), |this| this.enqueue_notice(notice));
    }

    fn take_notices(&mut self, out: &mut Vec<Notice>) {
        self.drops.take_notice(Instant::now(), out);
    }

    fn poll_at(&self) -> Option<Instant> {
        self.drops.poll_at()
    }

    fn close(&mut self) {
        NatsForwarder::close(self);
    }

    fn counters(&self, out: &mut Vec<super::SinkCounter>) {
        use super::SinkCounter;
        let s = NatsForwarder::counters(self);
        let url = self.url.to_string();
        out.extend([
            SinkCounter::total(
                "nats_sent",
                "NATS messages the server took (JetStream: acknowledged, duplicates included).",
                s.sent,
            )
            .of("url", url.clone()),
            SinkCounter::total(
                "nats_duplicates",
                "NATS messages the stream acknowledged as duplicates (another collector's copy came first).",
                s.duplicates,
            )
            .of("url", url.clone()),
            SinkCounter::total(
                "nats_dropped",
                "NATS messages that will never be sent (queue or memory budget full, shutdown).",
                s.dropped,
            )
            .of("url", url.clone()),
            SinkCounter::gauge(
                "nats_queued",
                "NATS messages queued or waiting for their acknowledgement.",
                s.queued,
            )
            .of("url", url.clone()),
            SinkCounter::total(
                "nats_retries",
                "NATS publishes made again after a missing or failed acknowledgement.",
                s.retries,
            )
            .of("url", url.clone()),
            SinkCounter::total(
                "nats_errors",
                "NATS errors (failed publishes, missing acknowledgements, stream set-up failures).",
                s.errors,
            )
            .of("url", url),
        ]);
    }
}

/// Exponential backoff between [`RECONNECT_MIN`] and [`RECONNECT_MAX`].
fn backoff(attempt: usize) -> Duration {
    let shift = u32::try_from(attempt.min(16)).unwrap_or(16);
    RECONNECT_MIN.saturating_mul(1 << shift).min(RECONNECT_MAX)
}

/// A publish waiting for its acknowledgement, with its message.
type PendingAck = BoxFuture<'static, (Queued, Result<jetstream::publish::PublishAck, String>)>;

/// What the worker thread runs.
struct Task {
    url: NatsUrl,
    stream: Option<StreamOptions>,
    counters: Arc<Counters>,
}

impl Task {
    /// Connects and delivers until the queue is closed and every message is delivered.
    async fn serve(self, mut queue: mpsc::Receiver<Outgoing>) {
        let queue = &mut queue;
        let Some(client) = self.connect().await else {
            return;
        };
        match &self.stream {
            None => self.publish_core(&client, queue).await,
            Some(stream) => {
                let context = jetstream::ContextBuilder::new()
                    .timeout(ACK_TIMEOUT)
                    .max_ack_inflight(ACK_WINDOW * 2)
                    .build(client.clone());
                self.ensure_stream(&client, &context, stream).await;
                self.publish_acked(&client, &context, queue).await;
            }
        }
        // Written before the connection closes (bounded by the grace period).
        let _ = client.flush().await;
    }

    /// A client that connects (and reconnects) in the background; `None` only when the
    /// addresses cannot be used at all.
    async fn connect(&self) -> Option<async_nats::Client> {
        let scheme = if self.url.tls { "tls" } else { "nats" };
        let servers: Result<Vec<async_nats::ServerAddr>, _> = self
            .url
            .servers
            .iter()
            .map(|s| format!("{scheme}://{s}").parse())
            .collect();
        let servers = match servers {
            Ok(servers) => servers,
            Err(error) => {
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(url = %self.url, %error, "cannot use the NATS server address");
                return None;
            }
        };
        let url = self.url.to_string();
        let options = async_nats::ConnectOptions::new()
            .name("netcon-sniff")
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(CONNECT_TIMEOUT)
            .reconnect_delay_callback(backoff)
            .require_tls(self.url.tls)
            .event_callback(move |event| {
                let url = url.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            tracing::info!(url, "connected to NATS");
                        }
                        async_nats::Event::Disconnected => {
                            tracing::warn!(
                                url,
                                "disconnected from NATS; queueing and reconnecting"
                            );
                        }
                        other => tracing::debug!(url, event = %other, "NATS"),
                    }
                }
            });
        match options.connect(servers).await {
            Ok(client) => Some(client),
            Err(error) => {
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(url = %self.url, %error, "cannot connect to NATS");
                None
            }
        }
    }

    /// Core NATS: publish as soon as a server is connected; the message is sent once it is in
    /// the client's buffer.
    async fn publish_core(
        &self,
        client: &async_nats::Client,
        queue: &mut mpsc::Receiver<Outgoing>,
    ) {
        while let Some(outgoing) = queue.recv().await {
            let Some(message) = self.message(outgoing) else {
                continue;
            };
            wait_connected(client).await;
            let mut headers = async_nats::HeaderMap::new();
            if let Some(id) = &message.id {
                headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
            }
            let result = client
                .publish_with_headers(message.subject.clone(), headers, message.payload.clone())
                .await;
            drop(message);
            match result {
                Ok(()) => {
                    self.counters.sent.fetch_add(1, Ordering::Relaxed);
                }
                Err(error) => {
                    self.counters.failed.fetch_add(1, Ordering::Relaxed);
                    self.counters.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(url = %self.url, %error, "cannot publish to NATS");
                }
            }
        }
    }

    /// Makes sure `stream` exists and covers `PREFIX.>` with a duplicate window of at least
    /// [`DUPLICATE_WINDOW`]; retries with backoff until it does (messages queue meanwhile).
    async fn ensure_stream(
        &self,
        client: &async_nats::Client,
        context: &jetstream::Context,
        stream: &StreamOptions,
    ) {
        let subjects = format!("{}.>", self.url.prefix);
        let wanted = jetstream::stream::Config {
            name: stream.name.clone(),
            subjects: vec![subjects.clone()],
            num_replicas: stream.replicas,
            duplicate_window: DUPLICATE_WINDOW,
            ..Default::default()
        };
        let mut attempt = 0;
        loop {
            wait_connected(client).await;
            let result = async {
                let mut existing = context
                    .get_or_create_stream(wanted.clone())
                    .await
                    .map_err(|e| e.to_string())?;
                let mut config = existing
                    .info()
                    .await
                    .map_err(|e| e.to_string())?
                    .config
                    .clone();
                if config.subjects.contains(&subjects)
                    && config.duplicate_window >= DUPLICATE_WINDOW
                {
                    return Ok(());
                }
                if !config.subjects.contains(&subjects) {
                    config.subjects.push(subjects.clone());
                }
                config.duplicate_window = config.duplicate_window.max(DUPLICATE_WINDOW);
                tracing::info!(
                    url = %self.url,
                    stream = stream.name,
                    "adding {subjects} and a duplicate window of {}s to the existing stream",
                    DUPLICATE_WINDOW.as_secs()
                );
                context
                    .update_stream(config)
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            }
            .await;
            match result {
                Ok(()) => {
                    tracing::debug!(url = %self.url, stream = stream.name, "stream ready");
                    return;
                }
                Err(error) => {
                    self.counters.errors.fetch_add(1, Ordering::Relaxed);
                    if attempt == 0 {
                        tracing::warn!(
                            url = %self.url,
                            stream = stream.name,
                            %error,
                            "cannot set up the JetStream stream; queueing and retrying"
                        );
                    }
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                }
            }
        }
    }

    /// `JetStream`: up to [`ACK_WINDOW`] publishes waiting for acknowledgement; a message whose
    /// acknowledgement fails or does not come is published again, until the queue is closed
    /// and every message acknowledged (or the grace period ends).
    async fn publish_acked(
        &self,
        client: &async_nats::Client,
        context: &jetstream::Context,
        queue: &mut mpsc::Receiver<Outgoing>,
    ) {
        let mut waiting: FuturesUnordered<PendingAck> = FuturesUnordered::new();
        let mut retry: VecDeque<Queued> = VecDeque::new();
        let mut closed = false;
        let mut failures = 0;
        loop {
            while waiting.len() < ACK_WINDOW
                && let Some(message) = retry.pop_front()
            {
                self.counters.retries.fetch_add(1, Ordering::Relaxed);
                if let Err(message) = self.publish(client, context, message, &mut waiting).await {
                    retry.push_front(message);
                    tokio::time::sleep(backoff(failures)).await;
                    failures += 1;
                    break;
                }
            }
            if closed && waiting.is_empty() && retry.is_empty() {
                return;
            }
            tokio::select! {
                biased;
                Some((message, result)) = waiting.next(), if !waiting.is_empty() => {
                    match result {
                        Ok(ack) => {
                            failures = 0;
                            drop(message);
                            self.counters.sent.fetch_add(1, Ordering::Relaxed);
                            if ack.duplicate {
                                self.counters.duplicates.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Err(error) => {
                            self.counters.errors.fetch_add(1, Ordering::Relaxed);
                            if failures == 0 {
                                tracing::warn!(
                                    url = %self.url,
                                    %error,
                                    "no acknowledgement from the JetStream stream; publishing again"
                                );
                            }
                            failures += 1;
                            retry.push_back(message);
                        }
                    }
                }
                message = queue.recv(), if !closed && waiting.len() < ACK_WINDOW && retry.is_empty() => {
                    match message {
                        Some(outgoing) => {
                            if let Some(message) = self.message(outgoing)
                                && let Err(message) =
                                    self.publish(client, context, message, &mut waiting).await
                            {
                                retry.push_back(message);
                            }
                        }
                        None => closed = true,
                    }
                }
                else => {}
            }
        }
    }

    /// The message for `outgoing`, formatted here rather than on the capture thread; an event
    /// that is not forwarded (none is queued) counts as failed, so the counters still add up.
    fn message(&self, outgoing: Outgoing) -> Option<Queued> {
        let message = outgoing.into_message(&self.url.prefix);
        if message.is_none() {
            self.counters.failed.fetch_add(1, Ordering::Relaxed);
        }
        message
    }

    /// Publishes one message once a server is connected and adds its acknowledgement to
    /// `waiting`; gives the message back when the publish itself failed.
    async fn publish(
        &self,
        client: &async_nats::Client,
        context: &jetstream::Context,
        message: Queued,
        waiting: &mut FuturesUnordered<PendingAck>,
    ) -> Result<(), Queued> {
        wait_connected(client).await;
        let mut publish =
            jetstream::message::PublishMessage::build().payload(message.payload.clone());
        if let Some(id) = &message.id {
            publish = publish.message_id(id);
        }
        match context.send_publish(message.subject.clone(), publish).await {
            Ok(ack) => {
                waiting
                    .push(async move { (message, ack.await.map_err(|e| e.to_string())) }.boxed());
                Ok(())
            }
            Err(error)
                if error.kind() == jetstream::context::PublishErrorKind::MaxPayloadExceeded =>
            {
                // It will never fit: give it up rather than retry forever.
                drop(message);
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(url = %self.url, %error, "message too large for NATS, dropped");
                Ok(())
            }
            Err(error) => {
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(url = %self.url, %error, "cannot publish to JetStream");
                Err(message)
            }
        }
    }
}

/// Returns once the client is connected to a server.
async fn wait_connected(client: &async_nats::Client) {
    while client.connection_state() != async_nats::connection::State::Connected {
        tokio::time::sleep(CONNECTED_POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netconsole::Record;

    #[test]
    fn notices_go_to_the_collector_or_the_sender_subject() {
        let at = chrono::Utc::now();
        let lost = Notice::ForwardLost(crate::notice::ForwardLost {
            noticed: at,
            url: "syslog+udp://10.1.0.9:514".to_owned(),
            messages: 3,
            first_dropped: at,
        });
        assert_eq!(
            notice_subject("netcon", "log.host", &lost),
            "netcon.collector.log_host"
        );
        let hook = Notice::Hook(crate::notice::HookNotice {
            at,
            sender: "10.1.0.7:6665".parse().unwrap(),
            outcome: HookOutcome::Late {
                waited: Duration::from_secs(1),
            },
        });
        assert_eq!(
            notice_subject("netcon", "h", &hook),
            "netcon.events.10_1_0_7"
        );
        let payload: serde_json::Value =
            serde_json::from_str(&notice_payload(&lost, "a\"b")).unwrap();
        assert_eq!(payload["type"], "forward_lost");
        assert_eq!(payload["messages"], 3);
        assert_eq!(payload["collector"], "a\"b");
    }

    #[test]
    fn own_drops_become_notices_and_other_notices_are_published() {
        // A server nobody runs: everything stays queued, the queue holds 2.
        let url: NatsUrl = "nats://127.0.0.1:9".parse().unwrap();
        let budget = MemoryBudget::new(1 << 20);
        let mut forwarder =
            NatsForwarder::start_with(&url, None, budget, 2, Duration::from_millis(100)).unwrap();
        let hook = Notice::Hook(crate::notice::HookNotice {
            at: chrono::Utc::now(),
            sender: "10.1.0.7:6665".parse().unwrap(),
            outcome: HookOutcome::Skipped(crate::notice::SkipReason::Memory),
        });
        forwarder.notice(&hook);
        for _ in 0..4 {
            forwarder.event(&Event::Record(Record::example(b"x")));
        }
        let mut notices = Vec::new();
        forwarder.take_notices(&mut notices);
        let [Notice::ForwardLost(lost)] = &notices[..] else {
            panic!("{notices:?}");
        };
        assert_eq!(lost.url, url.to_string());
        // The worker may hold one message besides the two queued.
        let dropped = forwarder.counters().dropped;
        assert!((2..=3).contains(&dropped), "{dropped}");
        assert_eq!(lost.messages, dropped);
        // Its own notice, handed back by the pipeline, is not published (nor dropped again).
        forwarder.notice(&notices[0]);
        assert_eq!(forwarder.counters().dropped, dropped);
        forwarder.close();
        notices.clear();
        forwarder.take_notices(&mut notices);
        let [Notice::ForwardLost(lost)] = &notices[..] else {
            panic!("{notices:?}");
        };
        assert_eq!(
            lost.messages,
            5 - dropped,
            "left queued at close: told at once"
        );
    }

    #[test]
    fn url_defaults_and_clusters() {
        let url: NatsUrl = "nats://10.1.0.5".parse().unwrap();
        assert_eq!(url.servers, vec!["10.1.0.5:4222"]);
        assert_eq!(url.prefix, "netcon");
        assert!(!url.tls);
        let url: NatsUrl = "nats://a:4223,b,[fd00:1::5]:4224/site1.netcon"
            .parse()
            .unwrap();
        assert_eq!(url.servers, vec!["a:4223", "b:4222", "[fd00:1::5]:4224"]);
        assert_eq!(url.prefix, "site1.netcon");
        assert_eq!(
            url.to_string(),
            "nats://a:4223,b:4222,[fd00:1::5]:4224/site1.netcon"
        );
        assert!("tls://nats.example/".parse::<NatsUrl>().unwrap().tls);
    }

    #[test]
    fn bad_urls_say_why() {
        for (url, why) in [
            ("http://a", "unknown scheme"),
            ("nats://a:0", "port"),
            ("nats://a:99999", "port"),
            ("nats://fd00::1", "brackets"),
            ("nats://a/net.*", "prefix"),
            ("nats://a/net..con", "prefix"),
            ("nats://user@a", "only HOST"),
            ("nats://a,,b", "host name"),
        ] {
            let error = url.parse::<NatsUrl>().unwrap_err().to_string();
            assert!(error.contains(why), "{url}: {error}");
        }
        assert!(parse_stream_name("NETCON").is_ok());
        assert!(parse_stream_name("a.b").is_err());
        assert!(parse_stream_name("").is_err());
    }

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
        plain.format = Format::Plain;
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

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        assert_eq!(backoff(0), RECONNECT_MIN);
        assert_eq!(backoff(1), RECONNECT_MIN * 2);
        assert_eq!(backoff(100), RECONNECT_MAX);
    }

    /// Nothing listens: the queue and the budget bound what is held, and every drop is counted.
    #[test]
    fn unreachable_server_bounds_the_queue_and_counts_drops() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let url: NatsUrl = format!("nats://127.0.0.1:{port}").parse().unwrap();
        let budget = MemoryBudget::new(1 << 20);
        let mut forwarder =
            NatsForwarder::start_with(&url, None, budget.clone(), 10, Duration::from_millis(100))
                .unwrap();
        for seq in 0..50 {
            let mut record = Record::example(b"x");
            record.seq = Some(seq);
            forwarder.event(&Event::Record(record));
        }
        let stats = forwarder.counters();
        assert_eq!(stats.sent, 0);
        assert!(stats.queued <= 11, "{stats:?}");
        assert_eq!(stats.dropped + stats.queued, 50, "{stats:?}");
        assert!(budget.used() > 0);
        forwarder.close();
        let stats = forwarder.counters();
        // The drops are reported in a `forward_lost` message if it fits: dropped in turn.
        assert_eq!((stats.sent, stats.queued), (0, 0), "{stats:?}");
        assert!(stats.dropped >= 50, "{stats:?}");
        assert_eq!(budget.used(), 0, "every queued byte given back");
    }
}
