//! The pipeline: captured frames → wire → netconsole decoder → every sink. It routes frames,
//! events and notices, keeps the counters, and knows no output format.

use std::{collections::BTreeMap, time::Instant};

use chrono::{DateTime, Utc};

use super::{RunError, RunSummary};
use crate::{
    capture::{CaptureCounters, Captured, InterfaceLabels},
    config::{Config, Source, StatsFormat},
    metrics::Snapshot,
    netconsole::{Decoder, DecoderConfig, Event, Incoming},
    notice::{CaptureLost, LossReason, Notice},
    sink::Sink,
    wire::Datagram,
};

/// Counts kept by the pipeline.
#[derive(Debug, Clone, Default)]
struct PipelineCounts {
    datagrams: u64,
    /// Datagrams by interface index (see [`crate::metrics::count_datagram`]).
    interfaces: Vec<(u32, u64)>,
    malformed: u64,
    other_ports: u64,
    denied: u64,
}

/// The clock that drives the decoder's timers.
///
/// Live, it is the monotonic clock. Reading a file, it is the file's own time, so that timeouts
/// (a partial line, missing fragments) mean the same as they did on the wire however fast the
/// file is read.
#[derive(Debug, Clone, Copy)]
enum Clock {
    Live,
    File {
        start: Instant,
        first: Option<DateTime<Utc>>,
    },
}

impl Clock {
    /// The decoder's `now` for a frame received at `received`; `batch_read` is when the live
    /// batch was read (one clock read a batch: a batch is read in well under the decoder's
    /// millisecond timers).
    fn now(&mut self, received: DateTime<Utc>, batch_read: Instant) -> Instant {
        match self {
            Self::Live => batch_read,
            Self::File { start, first } => {
                let first = *first.get_or_insert(received);
                *start + (received - first).to_std().unwrap_or_default()
            }
        }
    }
}

/// How `config`'s frames name their interface (`--format raw`, the `interface` label).
pub(super) fn interface_labels(config: &Config) -> InterfaceLabels {
    InterfaceLabels::new(&config.interfaces, matches!(config.source, Source::File(_)))
}

/// One sink and what it asked for, read once when it was added.
struct Route {
    sink: Box<dyn Sink>,
    frames: bool,
    events: bool,
}

/// One loss counter (a reason on an interface), as the pipeline follows it.
#[derive(Debug, Clone, Copy, Default)]
struct LossTally {
    /// The counter's value when last read.
    counter: u64,
    /// Frames reported lost in notices since capture started.
    reported: u64,
}

/// Turns captured frames into events and hands both to the sinks. Sans-IO apart from the sinks
/// it is handed.
pub struct Pipeline<'c> {
    config: &'c Config,
    counts: PipelineCounts,
    decoder: Decoder,
    events: Vec<Event>,
    routes: Vec<Route>,
    /// Some sink takes events: without one (`--format raw` alone) the decoder does not run.
    decode: bool,
    clock: Clock,
    /// Decoder time of the last frame, for timers while reading a file.
    last_now: Option<Instant>,
    /// Notices to hand to the sinks at the end of the batch.
    notices: Vec<Notice>,
    /// Each loss counter (by reason and interface) as last turned into notices.
    losses_seen: BTreeMap<(LossReason, String), LossTally>,
    /// Frames lost before decoding, all reasons, as reported in notices.
    capture_lost: u64,
    labels: InterfaceLabels,
}

impl<'c> Pipeline<'c> {
    /// A pipeline for `config`, with no sink yet.
    #[must_use]
    pub fn new(config: &'c Config) -> Self {
        Self {
            config,
            counts: PipelineCounts::default(),
            decoder: Decoder::with_budget(DecoderConfig::default(), config.budget.clone()),
            events: Vec::new(),
            routes: Vec::new(),
            decode: false,
            clock: match config.source {
                Source::Live => Clock::Live,
                Source::File(_) => Clock::File {
                    start: Instant::now(),
                    first: None,
                },
            },
            last_now: None,
            notices: Vec::new(),
            losses_seen: BTreeMap::new(),
            capture_lost: 0,
            labels: interface_labels(config),
        }
    }

    /// Adds an output. Within a batch, sinks get each frame and event in the order added.
    pub fn add_sink(&mut self, sink: Box<dyn Sink>) {
        let route = Route {
            frames: sink.wants_frames(),
            events: sink.wants_events(),
            sink,
        };
        self.decode |= route.events;
        self.routes.push(route);
    }

    /// Lets every sink deliver what it has queued (at exit), before the counters are read;
    /// then hands the notices closing gave rise to (messages a forwarder could not deliver in
    /// its grace period) to the sinks that can still write them.
    ///
    /// # Errors
    /// The first error of an output that ends the run.
    pub fn close(&mut self) -> Result<(), RunError> {
        for route in &mut self.routes {
            route.sink.close();
        }
        for route in &mut self.routes {
            route.sink.take_notices(&mut self.notices);
        }
        for notice in self.notices.drain(..) {
            for route in &mut self.routes {
                route.sink.notice_after_close(&notice);
            }
        }
        self.take_errors()
    }

    /// Asks every sink to reopen its files.
    pub fn reopen(&mut self) {
        for route in &mut self.routes {
            route.sink.reopen();
        }
    }

    /// When the decoder next needs [`Pipeline::tick`] (live capture only: a file's clock
    /// advances with its frames).
    #[must_use]
    pub fn poll_at(&self) -> Option<Instant> {
        let decoder = match self.clock {
            Clock::Live => self.decoder.poll_at(),
            Clock::File { .. } => None,
        };
        // Sinks with work waiting (a queued hook) get flushed even while no frame arrives.
        self.routes
            .iter()
            .filter_map(|route| route.sink.poll_at())
            .chain(decoder)
            .min()
    }

    /// Turns the growth of loss counters into `capture_lost` notices for every sink.
    /// `losses` are `(reason, interface, frames lost since capture started)`; a counter seen for
    /// the first time counts from zero.
    ///
    /// # Errors
    /// The first error of an output that ends the run.
    pub fn capture_losses(
        &mut self,
        losses: impl IntoIterator<Item = (LossReason, String, u64)>,
    ) -> Result<(), RunError> {
        let noticed = chrono::Utc::now();
        for (reason, interface, total) in losses {
            let seen = self
                .losses_seen
                .entry((reason, interface.clone()))
                .or_default();
            // A counter that went backwards (a reset) starts over without a notice.
            let frames = total.saturating_sub(seen.counter);
            seen.counter = total;
            if frames > 0 {
                self.note_loss(CaptureLost {
                    noticed,
                    interface,
                    reason,
                    frames,
                    sender: None,
                });
            }
        }
        self.end_batch()
    }

    /// Takes losses the capture reported itself, with their senders: handed on with the next
    /// batch's notices and counted like the others.
    pub fn capture_lost(&mut self, lost: Vec<CaptureLost>) {
        for lost in lost {
            self.note_loss(lost);
        }
    }

    /// Counts `lost` (in total and under its reason and interface) and queues its notice.
    fn note_loss(&mut self, lost: CaptureLost) {
        let reported = &mut self
            .losses_seen
            .entry((lost.reason, lost.interface.clone()))
            .or_default()
            .reported;
        *reported = reported.saturating_add(lost.frames);
        self.capture_lost = self.capture_lost.saturating_add(lost.frames);
        self.notices.push(Notice::CaptureLost(lost));
    }

    /// Fires the decoder's due timers and hands on what they produce.
    ///
    /// # Errors
    /// The first error of an output that ends the run.
    pub fn tick(&mut self) -> Result<(), RunError> {
        // A file's decoder runs on the file's clock, which only its frames move on; the tick
        // may still be due for a sink (a queued hook).
        if matches!(self.clock, Clock::Live) {
            self.decoder.poll(Instant::now(), &mut self.events);
        }
        self.route_events();
        self.end_batch()
    }

    /// Hands on everything the decoder still holds (at exit).
    ///
    /// # Errors
    /// The first error of an output that ends the run.
    pub fn finish(&mut self) -> Result<(), RunError> {
        self.decoder.flush(&mut self.events);
        self.route_events();
        self.end_batch()
    }

    /// Hands each matched frame of `batch` to the sinks that take frames, decodes it for those
    /// that take events, and ends the batch.
    ///
    /// # Errors
    /// The first error of an output that ends the run (stdout, `-w`), once every sink has had
    /// the whole batch.
    pub fn process(&mut self, batch: &[Captured]) -> Result<(), RunError> {
        let batch_read = Instant::now();
        for frame in batch {
            let datagram = match Datagram::parse_link(frame.link, &frame.bytes) {
                Ok(datagram) => datagram,
                Err(error) => {
                    self.counts.malformed += 1;
                    tracing::debug!(ifindex = frame.ifindex, %error, "skipping frame");
                    continue;
                }
            };
            // The kernel filters already matched the port on live capture; files and
            // many-port filters pass other traffic.
            if !self.config.ports.contains(&datagram.dst.port()) {
                self.counts.other_ports += 1;
                continue;
            }
            if !self.config.allow.is_empty()
                && !self
                    .config
                    .allow
                    .iter()
                    .any(|net| net.contains(&datagram.src.ip()))
            {
                self.counts.denied += 1;
                continue;
            }
            self.counts.datagrams += 1;
            crate::metrics::count_datagram(&mut self.counts.interfaces, frame.ifindex);
            for route in &mut self.routes {
                if route.frames {
                    route.sink.frame(frame, &datagram);
                }
            }
            if self.decode {
                let now = self.clock.now(frame.ts, batch_read);
                if self.last_now.is_some_and(|last| now > last) {
                    // A file's time moved on: fire the timers that fell due in between.
                    self.decoder.poll(now, &mut self.events);
                }
                self.last_now = Some(now);
                self.decoder.push(
                    now,
                    Incoming {
                        received: frame.ts,
                        ifindex: frame.ifindex,
                        src: datagram.src,
                        payload: datagram.payload,
                    },
                    &mut self.events,
                );
                self.route_events();
            }
        }
        self.end_batch()
    }

    fn route_events(&mut self) {
        // By reference, then cleared in place: an event (a record is a few hundred bytes) is
        // not moved out of the vector only to be dropped.
        for event in &self.events {
            for route in &mut self.routes {
                if route.events {
                    route.sink.event(event);
                }
            }
        }
        self.events.clear();
    }

    /// The end of a batch: every sink delivers what it holds. The notices pending and those
    /// the sinks give at their flush (a hook that found its slot) then reach every sink, and
    /// are delivered too, in this batch, not a batch later.
    fn end_batch(&mut self) -> Result<(), RunError> {
        for route in &mut self.routes {
            route.sink.flush();
        }
        for route in &mut self.routes {
            route.sink.take_notices(&mut self.notices);
        }
        if !self.notices.is_empty() {
            for notice in self.notices.drain(..) {
                for route in &mut self.routes {
                    route.sink.notice(&notice);
                }
            }
            for route in &mut self.routes {
                route.sink.flush();
            }
        }
        self.take_errors()
    }

    /// The first failure of an output that ends the run; the others are logged.
    fn take_errors(&mut self) -> Result<(), RunError> {
        let mut first = None;
        for route in &mut self.routes {
            if let Some(error) = route.sink.take_error() {
                if first.is_none() {
                    first = Some(error);
                } else {
                    tracing::warn!(%error, "output failed");
                }
            }
        }
        first.map_or(Ok(()), |error| Err(error.into()))
    }

    /// Every counter now, with the per-sender ones if `--metrics-per-sender` asks for them.
    #[must_use]
    pub fn snapshot(&self, capture: CaptureCounters) -> Snapshot {
        let mut sinks = Vec::new();
        for route in &self.routes {
            route.sink.counters(&mut sinks);
        }
        Snapshot {
            time: chrono::Utc::now(),
            capture,
            datagrams: self
                .counts
                .interfaces
                .iter()
                .map(|&(ifindex, n)| (self.interface_label(ifindex), n))
                .collect(),
            malformed_frames: self.counts.malformed,
            other_ports: self.counts.other_ports,
            denied: self.counts.denied,
            decoder: self.decoder.stats().clone(),
            sinks,
            memory: crate::metrics::Memory::of(&self.config.budget),
            capture_lost: self
                .losses_seen
                .iter()
                .map(|((reason, interface), tally)| crate::metrics::CaptureLoss {
                    reason: *reason,
                    interface: interface.clone(),
                    frames: tally.reported,
                })
                .collect(),
            senders: if self.config.metrics_per_sender {
                self.decoder
                    .senders()
                    .map(|(sender, tally)| crate::metrics::SenderSample {
                        sender,
                        tally: *tally,
                    })
                    .collect()
            } else {
                Vec::new()
            },
        }
    }

    /// The `interface` label of `ifindex`; [`crate::metrics::OTHER_INTERFACES`] stands for
    /// those beyond the count's bound.
    fn interface_label(&self, ifindex: u32) -> String {
        if ifindex == crate::metrics::OTHER_INTERFACES {
            "other".to_owned()
        } else {
            self.labels.label(ifindex).into_owned()
        }
    }

    /// The stats summary for stderr (`--stats`, SIGUSR1) in the `--stats-format` asked for.
    #[must_use]
    pub fn stats_report(&self, capture: CaptureCounters) -> String {
        match self.config.stats_format {
            StatsFormat::Text => format!("netcon-sniff: stats: {}", self.stats_line(&capture)),
            StatsFormat::Json => self.snapshot(capture).to_json("stats"),
        }
    }

    /// One line of every counter: capture, pipeline, decoder, sinks.
    #[must_use]
    pub fn stats_line(&self, capture: &CaptureCounters) -> String {
        use std::fmt::Write as _;
        let d = self.decoder.stats();
        let mut line = String::with_capacity(256);
        let _ = write!(
            line,
            "{capture} lost={} capture_lost={} | datagrams={} malformed_frames={} other_ports={} \
             denied={} | \
             records={} senders={} fragments={} reassembled={} incomplete={} partial={} \
             records_lost={} msgid_lost={} reboots={} duplicates={} malformed={} panics={} \
             suspicious={} senders_evicted={} continuations_cut={} budget_shed={} held_bytes={}",
            capture.lost(),
            self.capture_lost,
            self.counts.datagrams,
            self.counts.malformed,
            self.counts.other_ports,
            self.counts.denied,
            d.records,
            d.senders,
            d.fragments,
            d.reassembled,
            d.incomplete_records,
            d.partial_lines,
            d.records_lost,
            d.msgid_lost,
            d.reboots,
            d.duplicates,
            d.malformed,
            d.panics,
            d.suspicious,
            d.senders_evicted,
            d.continuations_cut,
            d.budget_shed,
            d.held_bytes,
        );
        for route in &self.routes {
            route.sink.stats(&mut line);
        }
        line
    }

    /// What the run did, for the exit summary.
    pub(super) fn summary(&self, capture: CaptureCounters) -> RunSummary {
        RunSummary {
            capture,
            datagrams: self.counts.datagrams,
            malformed: self.counts.malformed,
            other_ports: self.counts.other_ports,
            denied: self.counts.denied,
            decoder: self.decoder.stats().clone(),
            stats_line: self.stats_line(&capture),
            snapshot: self.snapshot(capture),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::{Interface, LinkType};
    use crate::config::{BackendChoice, OutputFormat, XdpModeChoice};
    use crate::sink::stdout::{StdoutFormat, StdoutSink};
    use crate::testing::TestOutput;
    use bytes::Bytes;
    use etherparse::PacketBuilder;
    use std::{cell::RefCell, rc::Rc};

    fn config() -> Config {
        Config {
            interfaces: vec![Interface {
                name: "c0".into(),
                ifindex: 7,
            }],
            ports: vec![6666],
            promisc: false,
            xdp_mode: XdpModeChoice::Auto,
            xdp_timestamps: crate::capture::xdp::Timestamps::Read,
            format: OutputFormat::Raw,
            color: false,
            ring_bytes: 1 << 20,
            source: Source::Live,
            write: None,
            backend: BackendChoice::Auto,
            log_dir: None,
            allow: Vec::new(),
            stats_interval: None,
            user: None,
            forward: Vec::new(),
            nats: crate::sink::nats::NatsForwarding::default(),
            on_panic: None,
            budget: crate::budget::MemoryBudget::default(),
            stats_format: StatsFormat::Text,
            metrics: None,
            metrics_per_sender: false,
        }
    }

    fn udp_frame(payload: &[u8]) -> Bytes {
        let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [0xff; 6])
            .ipv4([10, 9, 0, 10], [10, 9, 0, 99], 64)
            .udp(6665, 6666);
        let mut out = Vec::new();
        b.write(&mut out, payload).unwrap();
        out.into()
    }

    fn captured(ifindex: u32, bytes: Bytes) -> Captured {
        Captured {
            ts: chrono::DateTime::from_timestamp(0, 1000).unwrap(),
            ifindex,
            wire_len: 0,
            link: LinkType::Ethernet,
            bytes,
        }
    }

    fn stdout(pipeline: &mut Pipeline<'_>, format: StdoutFormat) -> TestOutput {
        let out = TestOutput::default();
        pipeline.add_sink(Box::new(StdoutSink::new(out.clone(), format)));
        out
    }

    /// A sink that keeps what it is handed.
    #[derive(Default)]
    struct Seen {
        events: usize,
        notices: Vec<Notice>,
    }

    struct Keeps(Rc<RefCell<Seen>>);

    impl Sink for Keeps {
        fn event(&mut self, _event: &Event) {
            self.0.borrow_mut().events += 1;
        }
        fn notice(&mut self, notice: &Notice) {
            self.0.borrow_mut().notices.push(notice.clone());
        }
    }

    #[test]
    fn batch_becomes_one_line_per_datagram_and_counts_malformed() {
        let config = config();
        let mut pipeline = Pipeline::new(&config);
        let out = stdout(&mut pipeline, StdoutFormat::Raw(interface_labels(&config)));
        assert!(!pipeline.decode, "raw alone needs no decoder");
        let batch = [
            captured(7, udp_frame(b"one\n")),
            captured(8, Bytes::from_static(b"junk")),
            captured(9, udp_frame(b"two")),
        ];
        pipeline.process(&batch).unwrap();
        assert_eq!(
            out.text(),
            "1970-01-01T00:00:00.000001Z c0 10.9.0.10:6665 > 10.9.0.99:6666 one\\n\n\
             1970-01-01T00:00:00.000001Z 9 10.9.0.10:6665 > 10.9.0.99:6666 two\n"
        );
        assert_eq!(out.writes.get(), 1, "one write per batch");
        assert_eq!(pipeline.counts.datagrams, 2);
        assert_eq!(pipeline.counts.malformed, 1);
    }

    #[test]
    fn a_failed_stdout_ends_the_run_after_every_other_sink_had_the_batch() {
        let config = config();
        let mut pipeline = Pipeline::new(&config);
        let out = TestOutput {
            error: Some(std::io::ErrorKind::BrokenPipe),
            ..TestOutput::default()
        };
        pipeline.add_sink(Box::new(StdoutSink::new(
            out,
            StdoutFormat::Text { color: false },
        )));
        let seen = Rc::new(RefCell::new(Seen::default()));
        pipeline.add_sink(Box::new(Keeps(Rc::clone(&seen))));
        assert!(pipeline.decode);
        let batch = [
            captured(7, udp_frame(b"6,1,100,-;one\n")),
            captured(7, udp_frame(b"6,2,200,-;two\n")),
        ];
        assert!(matches!(
            pipeline.process(&batch),
            Err(RunError::Output { source }) if source.kind() == std::io::ErrorKind::BrokenPipe
        ));
        assert_eq!(seen.borrow().events, 2);
        // Said once: finishing goes on for the others.
        pipeline.process(&batch[..1]).unwrap();
        pipeline.finish().unwrap();
        pipeline.close().unwrap();
        assert_eq!(seen.borrow().events, 3);
    }

    #[test]
    fn loss_counter_growth_becomes_one_notice_per_reason_and_interface() {
        let config = Config {
            format: OutputFormat::Json,
            ..config()
        };
        let mut pipeline = Pipeline::new(&config);
        let seen = Rc::new(RefCell::new(Seen::default()));
        pipeline.add_sink(Box::new(Keeps(Rc::clone(&seen))));
        let out = stdout(&mut pipeline, StdoutFormat::Json);
        let ring = |n| (LossReason::RingFull, "c0".to_owned(), n);
        let iface = |n| (LossReason::Interface, "c0".to_owned(), n);
        pipeline.capture_losses([ring(0), iface(0)]).unwrap();
        assert!(out.text().is_empty());
        pipeline.capture_losses([ring(15), iface(0)]).unwrap();
        pipeline.capture_losses([ring(15), iface(2)]).unwrap();
        // No growth, no notice; a counter that went back (a reset) starts over silently.
        pipeline.capture_losses([ring(15), iface(1)]).unwrap();
        pipeline.capture_losses([ring(20), iface(1)]).unwrap();
        let lines: Vec<serde_json::Value> = out
            .text()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let got: Vec<(String, u64)> = lines
            .iter()
            .map(|l| {
                assert_eq!(l["type"], "capture_lost");
                assert_eq!(l["interface"], "c0");
                (
                    l["reason"].as_str().unwrap().to_owned(),
                    l["frames"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("ring_full".to_owned(), 15),
                ("interface".to_owned(), 2),
                ("ring_full".to_owned(), 5)
            ]
        );
        assert_eq!(
            seen.borrow().notices.len(),
            3,
            "every sink gets the notices"
        );
        assert!(
            pipeline
                .stats_line(&CaptureCounters::File(
                    crate::capture::FileCounters::default()
                ))
                .contains(" capture_lost=22 ")
        );
    }

    /// A sink that gives a notice at its flush, and one more when it closes.
    struct GivesNotices {
        flushed: bool,
        closed: bool,
    }

    impl Sink for GivesNotices {
        fn event(&mut self, _event: &Event) {}
        fn flush(&mut self) {
            self.flushed = true;
        }
        fn close(&mut self) {
            self.closed = true;
        }
        fn take_notices(&mut self, out: &mut Vec<Notice>) {
            for (due, reason) in [
                (&mut self.flushed, LossReason::QueueFull),
                (&mut self.closed, LossReason::Socket),
            ] {
                if std::mem::take(due) {
                    out.push(Notice::CaptureLost(CaptureLost {
                        noticed: chrono::DateTime::from_timestamp(0, 0).unwrap(),
                        interface: "c0".into(),
                        reason,
                        frames: 1,
                        sender: None,
                    }));
                }
            }
        }
    }

    #[test]
    fn a_notice_given_at_a_flush_goes_out_in_the_same_batch_and_one_at_close_to_stdout_only() {
        let config = config();
        let mut pipeline = Pipeline::new(&config);
        let out = stdout(&mut pipeline, StdoutFormat::Text { color: false });
        pipeline.add_sink(Box::new(GivesNotices {
            flushed: false,
            closed: false,
        }));
        let seen = Rc::new(RefCell::new(Seen::default()));
        pipeline.add_sink(Box::new(Keeps(Rc::clone(&seen))));
        pipeline.tick().unwrap();
        // stdout was added first and flushed before the notice was given: it still has it.
        assert!(out.text().contains("capture queue full"), "{}", out.text());
        assert_eq!(seen.borrow().notices.len(), 1);
        pipeline.close().unwrap();
        assert!(out.text().contains("socket buffer full"), "{}", out.text());
        assert_eq!(seen.borrow().notices.len(), 1, "the others are closed");
    }
}
