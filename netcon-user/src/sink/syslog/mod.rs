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

mod rfc5424;
mod url;
mod worker;

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;

pub use self::rfc5424::{
    APP_NAME, FIELDS_SD_ID, MAX_FIELDS_BYTES, MAX_MESSAGE_BYTES, OWN_APP_NAME, SD_ID, format_event,
    format_notice, frame_octet_counted,
};
pub use self::url::{DEFAULT_PORT, ForwardUrl, Host, Transport};
pub use self::worker::{CONNECT_TIMEOUT, RECONNECT_MAX, RECONNECT_MIN, TCP_BATCH_BYTES};
use super::worker::{Forwarding, Outbox, Worker};
use super::{Sink, SinkCounter};
use crate::netconsole::Event;
use crate::notice::Notice;

/// Messages queued per forwarder, waiting for the socket, before new ones are dropped and
/// counted: 10,000 (a kernel's whole boot log is a few thousand records; at most
/// [`MAX_MESSAGE_BYTES`] each, about 80 MiB in the worst case, usually a few MiB).
pub const QUEUE_MESSAGES: usize = 10_000;
/// How long [`Forwarder::close`] lets the worker deliver what is still queued: 2 s. What is left
/// then is counted as dropped.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

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
    outbox: Outbox<String>,
    counters: Arc<worker::Counters>,
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
        let addrs = url::resolve(url)?;
        let worker_error = |source| SyslogError::Worker {
            url: url.to_string(),
            source,
        };
        let counters = Arc::new(worker::Counters::default());
        let task = worker::Task {
            url: url.to_string(),
            transport: url.transport,
            addrs,
            counters: Arc::clone(&counters),
        };
        let worker = Worker::spawn(
            "netcon-forward",
            grace,
            queue,
            move |mut queue| async move {
                task.serve(&mut queue).await;
            },
        )
        .map_err(worker_error)?;
        tracing::debug!(url = %url, "forwarding");
        Ok(Self {
            outbox: Outbox::new(worker, queue, url.to_string(), "forwarding"),
            counters,
        })
    }

    /// The counters so far.
    #[must_use]
    pub fn counters(&self) -> ForwardStats {
        let d = self.counters.delivered();
        let ledger = &self.outbox.ledger;
        ForwardStats {
            sent: d.sent,
            dropped: ledger.dropped(d.failed),
            queued: ledger.queued(d.sent, d.failed),
            errors: d.errors,
        }
    }

    /// Stops taking events and gives the worker [`SHUTDOWN_GRACE`] to deliver what is queued;
    /// what is left is counted as dropped. Blocks the calling thread for at most about that
    /// long. Called on drop; calling it again does nothing.
    pub fn close(&mut self) {
        self.outbox.close(|| self.counters.delivered());
    }

    /// Queues one message for the worker, or counts it as dropped. While drops wait for their
    /// report, the report goes first (and nothing else until it fits), so that it follows the
    /// gap in the server's log.
    fn enqueue(&mut self, message: String) {
        self.offer(Utc::now(), |this| this.outbox.try_queue(message));
    }
}

impl Forwarding for Forwarder {
    type Message = String;

    fn outbox(&mut self) -> &mut Outbox<String> {
        &mut self.outbox
    }

    fn queue_notice(&mut self, notice: &Notice) -> bool {
        self.outbox.try_queue(format_notice(notice))
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
        if !self.outbox.drops.is_own(notice) {
            self.enqueue(format_notice(notice));
        }
    }

    fn take_notices(&mut self, out: &mut Vec<Notice>) {
        self.outbox.take_notices(out);
    }

    fn poll_at(&self) -> Option<Instant> {
        self.outbox.drops.poll_at()
    }

    fn counters(&self, out: &mut Vec<SinkCounter>) {
        let s = Forwarder::counters(self);
        self.outbox.counters(
            [
                SinkCounter::total(
                    "forward_sent",
                    "Syslog messages handed to the socket.",
                    s.sent,
                ),
                SinkCounter::total(
                    "forward_dropped",
                    "Syslog messages that will never be sent (queue full, send failed, shutdown).",
                    s.dropped,
                ),
                SinkCounter::gauge(
                    "forward_queued",
                    "Syslog messages waiting in the queue.",
                    s.queued,
                ),
                SinkCounter::total(
                    "forward_errors",
                    "Syslog transport errors (failed connections and sends, lost connections).",
                    s.errors,
                ),
            ],
            out,
        );
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;
    use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};

    use chrono::DateTime;

    use super::*;
    use crate::netconsole::{Priority, Record};

    /// Deadline for anything a test waits for on loopback.
    const WAIT: Duration = Duration::from_secs(10);
    /// Grace period for tests that close a forwarder to a dead server.
    const SHORT_GRACE: Duration = Duration::from_millis(200);

    pub(super) fn url(s: &str) -> ForwardUrl {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    pub(super) fn at() -> DateTime<Utc> {
        DateTime::from_timestamp_micros(1_795_817_754_738_593).unwrap_or_default()
    }

    pub(super) fn sender() -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 77, 0, 10)), 6665)
    }

    pub(super) fn record(text: &[u8]) -> Record {
        Record {
            received: at(),
            priority: Priority::from_pri(14),
            kernel_time: DateTime::from_timestamp_micros(1_795_817_754_753_542),
            ..Record::example(text)
        }
    }

    pub(super) fn format_record(r: Record) -> String {
        format_event(&Event::Record(r)).expect("records are forwarded")
    }

    /// Forwards `count` records, `m0`, `m1`... each followed by `text`, and returns them.
    fn forward_records(f: &mut Forwarder, count: usize, text: &str) -> Vec<Record> {
        let records: Vec<Record> = (0..count)
            .map(|i| record(format!("m{i}{text}").as_bytes()))
            .collect();
        for r in &records {
            f.event(&Event::Record(r.clone()));
        }
        records
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
        let records = forward_records(&mut f, 3, "\nline");
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
        let records = forward_records(&mut f, 500, "\nsecond line é");
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
}
