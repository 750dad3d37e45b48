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

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use chrono::{DateTime, Utc};
use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::capture::CaptureCounters;
use crate::netconsole::DecoderStats;
use crate::notice::LossReason;
use crate::sink::{CounterKind, SinkCounter};

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

    /// The Prometheus text exposition (format 0.0.4) of this snapshot, `HELP` and `TYPE` lines
    /// included.
    #[must_use]
    pub fn to_prometheus(&self) -> String {
        let mut registry = Registry::with_prefix("netcon");
        let build = Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]);
        registry.register("build", "The netcon-sniff build", build);

        self.register_capture(&mut registry);

        let datagrams = Family::<[(&str, String); 1], Counter>::default();
        for (interface, n) in &self.datagrams {
            datagrams
                .get_or_create(&[("interface", interface.clone())])
                .inc_by(*n);
        }
        registry.register(
            "datagrams",
            "Netconsole datagrams taken for decoding, by interface",
            datagrams,
        );
        register_counter(
            &mut registry,
            "malformed_frames",
            "Frames that were not well-formed UDP",
            self.malformed_frames,
        );
        register_counter(
            &mut registry,
            "other_ports",
            "UDP datagrams to a port not configured",
            self.other_ports,
        );
        register_counter(
            &mut registry,
            "denied",
            "Datagrams from senders outside --allow",
            self.denied,
        );

        for (_, metric, help, value) in DECODER_COUNTERS {
            register_counter(&mut registry, metric, strip(help), value(&self.decoder));
        }
        register_gauge(
            &mut registry,
            "senders",
            "Senders tracked now",
            self.decoder.senders,
        );
        register_gauge(
            &mut registry,
            "decoder_held_bytes",
            "Bytes of the memory budget the decoder holds now (partial lines, continuations, fragments, senders)",
            self.decoder.held_bytes,
        );

        self.register_sinks(&mut registry);

        register_gauge(
            &mut registry,
            "memory_used_bytes",
            "Bytes of the memory budget held on behalf of senders now",
            self.memory.used,
        );
        register_gauge(
            &mut registry,
            "memory_peak_bytes",
            "The most bytes of the memory budget ever held at once",
            self.memory.peak,
        );
        register_gauge(
            &mut registry,
            "memory_limit_bytes",
            "The memory budget (--max-memory-mib)",
            self.memory.limit,
        );
        register_counter(
            &mut registry,
            "memory_refused",
            "Charges to the memory budget that did not fit (oldest state emitted instead)",
            self.memory.refused,
        );

        if !self.senders.is_empty() {
            self.register_senders(&mut registry);
        }

        let mut out = String::with_capacity(8 * 1024);
        // Writing to a String cannot fail.
        let _ = prometheus_text::encode(&mut out, &registry);
        out
    }

    /// The capture counters (`backend` label) and the frames reported lost (`interface` and
    /// `reason` labels).
    fn register_capture(&self, registry: &mut Registry) {
        let backend = backend_name(&self.capture);
        for (name, help, value) in capture_counters(&self.capture) {
            let family = Family::<[(&str, &str); 1], Counter>::default();
            family.get_or_create(&[("backend", backend)]).inc_by(value);
            registry.register(format!("capture_{name}"), strip(help), family);
        }
        if let Some(ring) = ring_fill(&self.capture) {
            for (name, help, value) in [
                (
                    "ringbuf_used_bytes",
                    "Bytes of the XDP ring buffer holding records not yet read",
                    ring.used,
                ),
                (
                    "ringbuf_size_bytes",
                    "Size of the XDP ring buffer (--ring-mib)",
                    ring.size,
                ),
            ] {
                let family = Family::<[(&str, &str); 1], Gauge<u64, AtomicU64>>::default();
                family.get_or_create(&[("backend", backend)]).set(value);
                registry.register(name, help, family);
            }
        }
        let lost = Family::<[(&str, &str); 1], Counter>::default();
        lost.get_or_create(&[("backend", backend)])
            .inc_by(self.capture_lost());
        registry.register(
            "capture_lost",
            "Matched frames the capture lost before netcon-sniff could read them",
            lost,
        );

        let reported = Family::<[(&str, String); 2], Counter>::default();
        for l in &self.capture_lost {
            reported
                .get_or_create(&[
                    ("interface", l.interface.clone()),
                    ("reason", l.reason.as_str().to_owned()),
                ])
                .inc_by(l.frames);
        }
        registry.register(
            "capture_lost_reported",
            "Frames lost before decoding as reported in capture_lost events, by interface and reason \
             (the interface reason counts any traffic the interface missed)",
            reported,
        );
    }

    fn register_sinks(&self, registry: &mut Registry) {
        let mut done: Vec<&str> = Vec::new();
        for c in &self.sinks {
            if done.contains(&c.name) {
                continue;
            }
            done.push(c.name);
            let same = self.sinks.iter().filter(|o| o.name == c.name);
            let help = strip(c.help);
            match c.kind {
                CounterKind::Total => {
                    let family = Family::<Vec<(&str, String)>, Counter>::default();
                    for o in same {
                        family.get_or_create(&labels(o)).inc_by(o.value);
                    }
                    registry.register(c.name, help, family);
                }
                CounterKind::Gauge => {
                    let family = Family::<Vec<(&str, String)>, Gauge<u64, AtomicU64>>::default();
                    for o in same {
                        family.get_or_create(&labels(o)).inc_by(o.value);
                    }
                    registry.register(c.name, help, family);
                }
            }
        }
    }

    fn register_senders(&self, registry: &mut Registry) {
        type Senders = Family<[(&'static str, String); 1], Counter>;
        let (records, records_lost, msgid_lost, panics) = (
            Senders::default(),
            Senders::default(),
            Senders::default(),
            Senders::default(),
        );
        let last_heard = Family::<[(&str, String); 1], Gauge<f64, AtomicU64>>::default();
        for s in &self.senders {
            let key = [("sender", s.sender.to_string())];
            records.get_or_create(&key).inc_by(s.tally.records);
            records_lost
                .get_or_create(&key)
                .inc_by(s.tally.records_lost);
            msgid_lost.get_or_create(&key).inc_by(s.tally.msgid_lost);
            panics.get_or_create(&key).inc_by(s.tally.panics);
            if let Some(t) = s.tally.last_heard {
                #[expect(
                    clippy::cast_precision_loss,
                    reason = "microseconds since 1970 fit a double's 53 bits until the year 2255"
                )]
                let seconds = t.timestamp_micros() as f64 / 1e6;
                last_heard.get_or_create(&key).set(seconds);
            }
        }
        registry.register("sender_records", "Records decoded, by sender", records);
        registry.register(
            "sender_records_lost",
            "Records missing according to sequence number gaps, by sender",
            records_lost,
        );
        registry.register(
            "sender_msgid_lost",
            "Messages missing according to sysdata msgid gaps, by sender",
            msgid_lost,
        );
        registry.register("sender_panics", "Crash reports begun, by sender", panics);
        registry.register(
            "sender_last_heard_timestamp_seconds",
            "When the sender's latest datagram was captured (Unix time)",
            last_heard,
        );
    }
}

/// prometheus-client ends every HELP text with a period of its own.
fn strip(help: &str) -> &str {
    help.trim_end_matches('.')
}

fn labels(c: &SinkCounter) -> Vec<(&'static str, String)> {
    c.instance.iter().cloned().collect()
}

fn register_counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let counter = Counter::<u64>::default();
    counter.inc_by(value);
    registry.register(name, help, counter);
}

fn register_gauge(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let gauge = Gauge::<u64, AtomicU64>::default();
    gauge.set(value);
    registry.register(name, help, gauge);
}

// ---------------------------------------------------------------------------------------------
// The HTTP endpoint
// ---------------------------------------------------------------------------------------------

/// A scrape waiting for a snapshot from the pipeline loop.
pub type ScrapeRequest = oneshot::Sender<Snapshot>;

/// The `--metrics` endpoint: an accept loop on the current runtime, and the queue of scrapes
/// that the pipeline loop answers.
pub struct MetricsServer {
    requests: mpsc::Receiver<ScrapeRequest>,
    addr: SocketAddr,
    accept: tokio::task::JoinHandle<()>,
}

impl MetricsServer {
    /// Binds `addr` and starts serving on the current tokio runtime.
    ///
    /// # Errors
    /// [`MetricsError::Bind`] when the address cannot be bound.
    pub fn start(addr: SocketAddr) -> Result<Self, MetricsError> {
        let bind_error = |source| MetricsError::Bind { addr, source };
        let listener = std::net::TcpListener::bind(addr).map_err(bind_error)?;
        listener.set_nonblocking(true).map_err(bind_error)?;
        let local = listener.local_addr().map_err(bind_error)?;
        let listener = TcpListener::from_std(listener).map_err(bind_error)?;
        let (tx, requests) = mpsc::channel(MAX_CONNECTIONS);
        let accept = tokio::spawn(accept_loop(listener, tx));
        Ok(Self {
            requests,
            addr: local,
            accept,
        })
    }

    /// The address it listens on (the port filled in when 0 was asked for).
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The next scrape to answer (cancel-safe; never completes once the accept loop is gone).
    pub async fn request(&mut self) -> ScrapeRequest {
        match self.requests.recv().await {
            Some(request) => request,
            None => std::future::pending().await,
        }
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn accept_loop(listener: TcpListener, requests: mpsc::Sender<ScrapeRequest>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of descriptors, mostly: wait rather than spin.
                tracing::warn!(%error, "--metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::debug!(%peer, "--metrics: too many connections; closing this one");
            continue;
        };
        let requests = requests.clone();
        tokio::spawn(async move {
            if let Err(error) = serve(stream, &requests).await {
                tracing::debug!(%peer, %error, "--metrics: connection failed");
            }
            drop(slot);
        });
    }
}

/// What a request asked for.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    /// `GET /metrics` (`HEAD` too: no body).
    Metrics { head: bool },
    /// `GET /`.
    Index,
    /// A path there is nothing at.
    NotFound,
    /// Another method on `/metrics`.
    MethodNotAllowed,
    /// Not an HTTP/1 request line.
    BadRequest,
}

/// Routes a request head (everything up to the blank line).
fn route(head: &[u8]) -> Route {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Ok(line) = std::str::from_utf8(line) else {
        return Route::BadRequest;
    };
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Route::BadRequest;
    };
    if !version.starts_with("HTTP/1.") {
        return Route::BadRequest;
    }
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    match (method, path) {
        ("GET", "/metrics") => Route::Metrics { head: false },
        ("HEAD", "/metrics") => Route::Metrics { head: true },
        (_, "/metrics") => Route::MethodNotAllowed,
        ("GET" | "HEAD", "/") => Route::Index,
        _ => Route::NotFound,
    }
}

async fn serve(mut stream: TcpStream, requests: &mpsc::Sender<ScrapeRequest>) -> io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let read = tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut stream, &mut head)).await;
    let (status, content_type, body, send_body) = match read {
        Err(_) => return Ok(()),
        Ok(Err(error)) => return Err(error),
        Ok(Ok(false)) => (
            "431 Request Header Fields Too Large",
            "text/plain",
            String::new(),
            false,
        ),
        Ok(Ok(true)) => match route(&head) {
            // Encoding a full per-sender table takes milliseconds: off the runtime's thread,
            // which is the capture loop's.
            Route::Metrics { head } => match scrape(requests).await {
                Some(snapshot) => (
                    "200 OK",
                    prometheus_text::CONTENT_TYPE,
                    tokio::task::spawn_blocking(move || snapshot.to_prometheus())
                        .await
                        .map_err(io::Error::other)?,
                    !head,
                ),
                None => (
                    "503 Service Unavailable",
                    "text/plain",
                    "the pipeline did not answer in time\n".to_owned(),
                    !head,
                ),
            },
            Route::Index => (
                "200 OK",
                "text/plain",
                "netcon-sniff: metrics are at /metrics\n".to_owned(),
                true,
            ),
            Route::NotFound => ("404 Not Found", "text/plain", String::new(), false),
            Route::MethodNotAllowed => {
                ("405 Method Not Allowed", "text/plain", String::new(), false)
            }
            Route::BadRequest => ("400 Bad Request", "text/plain", String::new(), false),
        },
    };
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    if send_body {
        response.push_str(&body);
    }
    // A client that stops reading must not keep its slot for ever.
    tokio::time::timeout(RESPONSE_TIMEOUT, async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    })
    .await
    .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
}

/// Reads until the blank line that ends a request head: `false` when it is longer than
/// [`MAX_REQUEST_BYTES`].
async fn read_head(stream: &mut TcpStream, head: &mut Vec<u8>) -> io::Result<bool> {
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        head.extend_from_slice(&buf[..n]);
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            return Ok(true);
        }
        if head.len() > MAX_REQUEST_BYTES {
            return Ok(false);
        }
    }
}

/// Asks the pipeline loop for a snapshot; `None` if it does not answer within
/// [`SCRAPE_TIMEOUT`].
async fn scrape(requests: &mpsc::Sender<ScrapeRequest>) -> Option<Snapshot> {
    let (tx, rx) = oneshot::channel();
    tokio::time::timeout(SCRAPE_TIMEOUT, async {
        requests.send(tx).await.ok()?;
        rx.await.ok()
    })
    .await
    .ok()
    .flatten()
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

    fn snapshot() -> Snapshot {
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
    fn prometheus_text_has_help_type_and_labels() {
        let text = snapshot().to_prometheus();
        for expected in [
            "# HELP netcon_records_total Records decoded.\n",
            "# TYPE netcon_records_total counter\n",
            "netcon_records_total 4\n",
            "netcon_capture_lost_total{backend=\"xdp\"} 3\n",
            "netcon_capture_ringbuf_full_total{backend=\"xdp\"} 2\n",
            "netcon_capture_wakeups_total{backend=\"xdp\"} 7\n",
            "# TYPE netcon_ringbuf_used_bytes gauge\n",
            "netcon_ringbuf_used_bytes{backend=\"xdp\"} 4096\n",
            "# TYPE netcon_ringbuf_size_bytes gauge\n",
            "netcon_ringbuf_size_bytes{backend=\"xdp\"} 8388608\n",
            "netcon_datagrams_total{interface=\"eth1\"} 5\n",
            "netcon_datagrams_total{interface=\"eth2\"} 1\n",
            "netcon_records_lost_total 3\n",
            "netcon_capture_lost_reported_total{interface=\"eth1,eth2\",reason=\"ring_full\"} 2\n",
            "netcon_suspicious_datagrams_total 1\n",
            "netcon_senders_evicted_total 3\n",
            "netcon_budget_shed_total 0\n",
            "# TYPE netcon_decoder_held_bytes gauge\n",
            "netcon_decoder_held_bytes 640\n",
            "netcon_panics_total 1\n",
            "# TYPE netcon_senders gauge\n",
            "netcon_senders 2\n",
            "netcon_forward_sent_total{url=\"syslog+tcp://a:514\"} 4\n",
            "netcon_forward_sent_total{url=\"syslog+udp://b:514\"} 2\n",
            "# TYPE netcon_forward_queued gauge\n",
            "netcon_forward_queued{url=\"syslog+tcp://a:514\"} 1\n",
            "netcon_hooks_run_total 1\n",
            "netcon_memory_used_bytes 100\n",
            "netcon_memory_limit_bytes 1000\n",
            "netcon_build_info{version=\"",
        ] {
            assert!(text.contains(expected), "{expected:?} missing in\n{text}");
        }
        // Each family once: HELP and TYPE are not repeated for the second forwarder.
        assert_eq!(text.matches("# TYPE netcon_forward_sent_total ").count(), 1);
        assert!(!text.contains("netcon_sender_"), "{text}");
    }

    #[test]
    fn per_sender_family_lists_the_senders_given() {
        let mut s = snapshot();
        s.senders = vec![SenderSample {
            sender: "10.0.0.1:6665".parse().unwrap(),
            tally: SenderTally {
                records: 7,
                records_lost: 1,
                msgid_lost: 0,
                panics: 1,
                last_heard: DateTime::from_timestamp(1_795_817_636, 500_000_000),
            },
        }];
        let text = s.to_prometheus();
        for expected in [
            "netcon_sender_records_total{sender=\"10.0.0.1:6665\"} 7\n",
            "netcon_sender_records_lost_total{sender=\"10.0.0.1:6665\"} 1\n",
            "netcon_sender_panics_total{sender=\"10.0.0.1:6665\"} 1\n",
            "netcon_sender_last_heard_timestamp_seconds{sender=\"10.0.0.1:6665\"} 1795817636.5\n",
        ] {
            assert!(text.contains(expected), "{expected:?} missing in\n{text}");
        }
    }

    #[test]
    fn a_full_sender_table_makes_five_series_per_sender() {
        let mut s = snapshot();
        let senders = crate::netconsole::DEFAULT_MAX_SENDERS;
        s.senders = (0..senders)
            .map(|i| SenderSample {
                sender: SocketAddr::from((
                    [
                        10,
                        0,
                        u8::try_from(i / 256).unwrap(),
                        u8::try_from(i % 256).unwrap(),
                    ],
                    6665,
                )),
                tally: SenderTally {
                    records: 1,
                    last_heard: DateTime::from_timestamp(1_795_817_636, 0),
                    ..SenderTally::default()
                },
            })
            .collect();
        let started = std::time::Instant::now();
        let text = s.to_prometheus();
        let series = text
            .lines()
            .filter(|l| l.starts_with("netcon_sender_"))
            .count();
        assert_eq!(series, 5 * senders);
        println!(
            "{senders} senders: {} bytes, encoded in {:?}",
            text.len(),
            started.elapsed()
        );
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
    fn routes() {
        assert_eq!(
            route(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Route::Metrics { head: false }
        );
        assert_eq!(
            route(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"),
            Route::Metrics { head: false }
        );
        assert_eq!(
            route(b"HEAD /metrics HTTP/1.1\r\n\r\n"),
            Route::Metrics { head: true }
        );
        assert_eq!(
            route(b"POST /metrics HTTP/1.1\r\n\r\n"),
            Route::MethodNotAllowed
        );
        assert_eq!(route(b"GET / HTTP/1.1\r\n\r\n"), Route::Index);
        assert_eq!(route(b"GET /x HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(route(b"GET /metrics\r\n\r\n"), Route::BadRequest);
        assert_eq!(route(b"\xff\xfe\r\n\r\n"), Route::BadRequest);
        assert_eq!(route(b"GET /metrics SPDY/3\r\n\r\n"), Route::BadRequest);
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

    /// GETs `path` from `addr`, returns the whole response.
    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }

    #[tokio::test]
    async fn a_scrape_the_loop_does_not_answer_is_503_and_others_404() {
        let mut server = MetricsServer::start("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = server.local_addr();
        let client = tokio::spawn(get(addr, "/metrics"));
        // The loop takes the request and drops it unanswered.
        drop(server.request().await);
        let response = client.await.unwrap();
        assert!(
            response.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{response}"
        );
        let response = get(addr, "/other").await;
        assert!(
            response.starts_with("HTTP/1.1 404 Not Found\r\n"),
            "{response}"
        );
    }

    #[tokio::test]
    async fn serves_metrics_answered_by_the_loop() {
        let mut server = MetricsServer::start("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = server.local_addr();
        let client = tokio::spawn(get(addr, "/metrics"));
        let request = server.request().await;
        request.send(snapshot()).unwrap();
        let response = client.await.unwrap();
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        assert!(
            response.contains("Content-Type: text/plain; version=0.0.4"),
            "{response}"
        );
        let (_, body) = response.split_once("\r\n\r\n").unwrap();
        // The same lines; the order of a family's series is not fixed.
        let sorted = |text: &str| {
            let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
            lines.sort();
            lines
        };
        assert_eq!(sorted(body), sorted(&snapshot().to_prometheus()));
    }
}
