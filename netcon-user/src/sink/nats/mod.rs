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

mod message;
mod url;
mod worker;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::Utc;

use self::message::{
    Charge, Outgoing, QUEUED_OVERHEAD, Queued, host_name, notice_kind, queued_event_bytes,
};
pub use self::message::{fnv1a, message_id, notice_payload, notice_subject, sender_token, subject};
pub use self::url::{NatsUrl, parse_stream_name};
use self::worker::{Counters, Task};
use super::worker::{Forwarding, Outbox, Worker};
use super::{Sink, SinkCounter};
use crate::budget::MemoryBudget;
use crate::netconsole::Event;
use crate::notice::Notice;

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
    outbox: Outbox<Outgoing>,
    counters: Arc<Counters>,
    budget: MemoryBudget,
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
        let counters = Arc::new(Counters::default());
        let task = Task {
            url: url.clone(),
            stream: stream.cloned(),
            counters: Arc::clone(&counters),
        };
        // Whatever is still queued when the task ends or is given up on is dropped with the
        // receiver, and its bytes given back.
        let worker = Worker::spawn("netcon-nats", grace, queue, move |queue| task.serve(queue))
            .map_err(worker_error)?;
        tracing::debug!(url = %url, "forwarding to NATS");
        Ok(Self {
            url: url.clone(),
            outbox: Outbox::new(worker, queue, url.to_string(), "NATS forwarding"),
            counters,
            budget,
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
        let d = self.counters.delivery.delivered();
        let ledger = &self.outbox.ledger;
        NatsStats {
            sent: d.sent,
            duplicates: self.counters.duplicates.load(Ordering::Relaxed),
            dropped: ledger.dropped(d.failed),
            queued: ledger.queued(d.sent, d.failed),
            retries: self.counters.retries.load(Ordering::Relaxed),
            errors: d.errors,
        }
    }

    /// Charges `bytes` and queues what `outgoing` makes of the charge; `false` (nothing
    /// charged) when it does not fit.
    fn enqueue(&mut self, bytes: usize, outgoing: impl FnOnce(Charge) -> Outgoing) -> bool {
        if !self.outbox.is_open() || !self.budget.try_charge(bytes) {
            return false;
        }
        let charge = Charge {
            budget: self.budget.clone(),
            bytes,
        };
        // A refused message is dropped here, and its charge with it.
        self.outbox.try_queue(outgoing(charge))
    }

    /// Stops taking events and gives the worker [`SHUTDOWN_GRACE`] to deliver what is queued;
    /// what is left is counted as dropped. Called on drop; calling it again does nothing.
    pub fn close(&mut self) {
        // A last report of drops, if it fits.
        self.report_drops();
        self.outbox.close(|| self.counters.delivery.delivered());
    }
}

impl Forwarding for NatsForwarder {
    type Message = Outgoing;

    fn outbox(&mut self) -> &mut Outbox<Outgoing> {
        &mut self.outbox
    }

    /// Queues one of the collector's own notices (see [`notice_subject`]); `false` when it
    /// does not fit.
    fn queue_notice(&mut self, notice: &Notice) -> bool {
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
        // Its own drops it reports once there is room again (see `Forwarding::offer`); after
        // close there is nowhere to publish.
        if self.outbox.drops.is_own(notice) || !self.outbox.is_open() {
            return;
        }
        self.offer(Utc::now(), |this| this.queue_notice(notice));
    }

    fn take_notices(&mut self, out: &mut Vec<Notice>) {
        self.outbox.take_notices(out);
    }

    fn poll_at(&self) -> Option<Instant> {
        self.outbox.drops.poll_at()
    }

    fn close(&mut self) {
        NatsForwarder::close(self);
    }

    fn counters(&self, out: &mut Vec<SinkCounter>) {
        let s = NatsForwarder::counters(self);
        self.outbox.counters(
            [
                SinkCounter::total(
                    "nats_sent",
                    "NATS messages the server took (JetStream: acknowledged, duplicates included).",
                    s.sent,
                ),
                SinkCounter::total(
                    "nats_duplicates",
                    "NATS messages the stream acknowledged as duplicates (another collector's copy came first).",
                    s.duplicates,
                ),
                SinkCounter::total(
                    "nats_dropped",
                    "NATS messages that will never be sent (queue or memory budget full, shutdown).",
                    s.dropped,
                ),
                SinkCounter::gauge(
                    "nats_queued",
                    "NATS messages queued or waiting for their acknowledgement.",
                    s.queued,
                ),
                SinkCounter::total(
                    "nats_retries",
                    "NATS publishes made again after a missing or failed acknowledgement.",
                    s.retries,
                ),
                SinkCounter::total(
                    "nats_errors",
                    "NATS errors (failed publishes, missing acknowledgements, stream set-up failures).",
                    s.errors,
                ),
            ],
            out,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netconsole::Record;
    use crate::notice::HookOutcome;

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
        let event = |seq| {
            let mut record = Record::example(b"x");
            record.seq = Some(seq);
            Event::Record(record)
        };
        // The worker takes the first message and holds it until a server answers; wait for
        // that, so that no place frees up in the queue while it is flooded (a freed place would
        // let the `forward_lost` report in, one message more than the events).
        forwarder.event(&event(0));
        let deadline = Instant::now() + Duration::from_secs(10);
        while forwarder.outbox.free_slots() < 10 {
            assert!(Instant::now() < deadline, "the worker never took a message");
            std::thread::sleep(Duration::from_millis(5));
        }
        for seq in 1..50 {
            forwarder.event(&event(seq));
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
