//! The pipeline: capture → wire → sink, and its async shell.

use std::{
    collections::BTreeMap,
    future::Future,
    io::{self, Write},
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};

use crate::{
    capture::{
        Backend, CaptureCounters, CaptureError, Captured,
        pcap::{PcapFileCapture, PcapFileError, PcapFileWriter},
        promisc::{PromiscError, PromiscGuard},
        raw::RawCapture,
        xdp::XdpCapture,
    },
    config::{BackendChoice, Config, Format, Source, StatsFormat},
    metrics::{MetricsServer, ScrapeRequest, Snapshot},
    netconsole::{Decoder, DecoderConfig, DecoderStats, Event, Incoming},
    notice::{CaptureLost, LossReason, Notice},
    sink::{self, Sink},
    systemd::Systemd,
    wire::Datagram,
};

/// Why `run` stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Capture failed to start or to read.
    #[error(transparent)]
    Capture(#[from] CaptureError),
    /// Promiscuous mode was refused.
    #[error(transparent)]
    Promisc(#[from] PromiscError),
    /// --log-dir cannot be used.
    #[error(transparent)]
    LogDir(#[from] sink::files::FilesError),
    /// --forward cannot be used.
    #[error(transparent)]
    Forward(#[from] sink::syslog::SyslogError),
    /// --forward nats:// cannot be used.
    #[error(transparent)]
    Nats(#[from] sink::nats::NatsError),
    /// --metrics cannot serve.
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
    /// Dropping root failed.
    #[error(transparent)]
    Privileges(#[from] crate::privileges::PrivilegeError),
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers: {source}")]
    Signals {
        #[source]
        source: io::Error,
    },
    /// Writing records failed (a closed pipe is reported as this too; `main` exits 0 on it).
    #[error("writing output: {source}")]
    Output {
        #[source]
        source: io::Error,
    },
}

impl From<PcapFileError> for RunError {
    fn from(error: PcapFileError) -> Self {
        Self::Capture(error.into())
    }
}

/// What a run did, for the exit summary.
#[derive(Debug, Clone)]
pub struct Summary {
    /// The capture backend's counters.
    pub capture: CaptureCounters,
    /// Datagrams printed.
    pub datagrams: u64,
    /// Frames that were not well-formed UDP.
    pub malformed: u64,
    /// Well-formed UDP to a port not configured (capture files, many-port raw filters).
    pub other_ports: u64,
    /// Datagrams from senders outside `--allow`.
    pub denied: u64,
    /// The decoder's counters.
    pub decoder: DecoderStats,
    /// The stats line (as printed on SIGUSR1), for the exit summary.
    pub stats_line: String,
    /// Every counter, for `--stats-format json`.
    pub snapshot: Snapshot,
}

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
    fn now(&mut self, received: DateTime<Utc>) -> Instant {
        match self {
            Self::Live => Instant::now(),
            Self::File { start, first } => {
                let first = *first.get_or_insert(received);
                *start + (received - first).to_std().unwrap_or_default()
            }
        }
    }
}

/// Turns captured frames into output. Sans-IO apart from the writers it is handed.
pub struct Pipeline<'c> {
    config: &'c Config,
    line: String,
    /// One event's text before it is colored.
    scratch: String,
    pcap: Option<PcapFileWriter>,
    counts: PipelineCounts,
    decoder: Decoder,
    events: Vec<Event>,
    sinks: Vec<Box<dyn Sink>>,
    clock: Clock,
    /// Decoder time of the last frame, for timers while reading a file.
    last_now: Option<Instant>,
    /// Notices to write with the next output.
    notices: Vec<Notice>,
    /// Each loss counter (by reason and interface) as last turned into notices.
    losses_seen: BTreeMap<(LossReason, String), LossTally>,
    /// Frames lost before decoding, all reasons, as reported in notices.
    capture_lost: u64,
    /// The first `-w` write error: saving stopped there, every other output went on.
    pcap_error: Option<PcapFileError>,
}

/// One loss counter (a reason on an interface), as the pipeline follows it.
#[derive(Debug, Clone, Copy, Default)]
struct LossTally {
    /// The counter's value when last read.
    counter: u64,
    /// Frames reported lost in notices since capture started.
    reported: u64,
}

/// How often capture loss counters are read, so that a loss shows in the output within about
/// this long of happening: 1 s.
pub const LOSS_POLL_INTERVAL: Duration = Duration::from_secs(1);

impl<'c> Pipeline<'c> {
    /// A pipeline for `config`, saving matched frames to `pcap` if given.
    #[must_use]
    pub fn new(config: &'c Config, pcap: Option<PcapFileWriter>) -> Self {
        Self {
            config,
            line: String::with_capacity(64 * 1024),
            scratch: String::new(),
            pcap,
            counts: PipelineCounts::default(),
            decoder: Decoder::with_budget(DecoderConfig::default(), config.budget.clone()),
            events: Vec::new(),
            sinks: Vec::new(),
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
            pcap_error: None,
        }
    }

    /// Adds a destination that gets every decoded event.
    pub fn add_sink(&mut self, sink: Box<dyn Sink>) {
        self.sinks.push(sink);
    }

    /// Lets every sink deliver what it has queued (at exit), before the counters are read;
    /// then writes the notices closing gave rise to (messages a forwarder could not deliver in
    /// its grace period) to the output only, the sinks being closed.
    ///
    /// # Errors
    /// The writer's error.
    pub fn close(&mut self, out: &mut impl Write) -> Result<(), RunError> {
        for sink in &mut self.sinks {
            sink.close();
        }
        self.line.clear();
        for sink in &mut self.sinks {
            sink.take_notices(&mut self.notices);
        }
        for notice in self.notices.drain(..) {
            write_notice(self.config.format, &notice, &mut self.line);
        }
        if self.line.is_empty() {
            return Ok(());
        }
        out.write_all(self.line.as_bytes())
            .and_then(|()| out.flush())
            .map_err(|source| RunError::Output { source })
    }

    /// Asks every sink to reopen its files.
    pub fn reopen(&mut self) {
        for sink in &mut self.sinks {
            sink.reopen();
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
        self.sinks
            .iter()
            .filter_map(|sink| sink.poll_at())
            .chain(decoder)
            .min()
    }

    /// Turns the growth of loss counters into `capture_lost` notices and writes them.
    /// `losses` are `(reason, interface, frames lost since capture started)`; a counter seen for
    /// the first time counts from zero.
    ///
    /// # Errors
    /// The writer's error.
    pub fn capture_losses(
        &mut self,
        losses: impl IntoIterator<Item = (LossReason, String, u64)>,
        out: &mut impl Write,
    ) -> Result<(), RunError> {
        self.line.clear();
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
                seen.reported = seen.reported.saturating_add(frames);
                self.capture_lost = self.capture_lost.saturating_add(frames);
                self.notices.push(Notice::CaptureLost(CaptureLost {
                    noticed,
                    interface,
                    reason,
                    frames,
                    sender: None,
                }));
            }
        }
        self.write_out(out)
    }

    /// Takes losses the capture reported itself, with their senders: written with the next
    /// output and counted like the others.
    pub fn capture_lost(&mut self, lost: Vec<CaptureLost>) {
        for lost in lost {
            let seen = self
                .losses_seen
                .entry((lost.reason, lost.interface.clone()));
            let seen = &mut seen.or_default().reported;
            *seen = seen.saturating_add(lost.frames);
            self.capture_lost = self.capture_lost.saturating_add(lost.frames);
            self.notices.push(Notice::CaptureLost(lost));
        }
    }

    /// Writes the pending notices: to every sink, and to the output line.
    fn write_notices(&mut self) {
        for sink in &mut self.sinks {
            sink.take_notices(&mut self.notices);
        }
        for notice in self.notices.drain(..) {
            for sink in &mut self.sinks {
                sink.notice(&notice);
            }
            write_notice(self.config.format, &notice, &mut self.line);
        }
    }

    /// Fires the decoder's due timers and writes what they produce.
    ///
    /// # Errors
    /// The writer's error.
    pub fn tick(&mut self, out: &mut impl Write) -> Result<(), RunError> {
        self.line.clear();
        // A file's decoder runs on the file's clock, which only its frames move on; the tick
        // may still be due for a sink (a queued hook).
        if matches!(self.clock, Clock::Live) {
            self.decoder.poll(Instant::now(), &mut self.events);
        }
        self.write_events();
        self.write_out(out)
    }

    /// Emits everything the decoder still holds (at exit), and writes it.
    ///
    /// # Errors
    /// The writer's error.
    pub fn finish(&mut self, out: &mut impl Write) -> Result<(), RunError> {
        self.line.clear();
        self.decoder.flush(&mut self.events);
        self.write_events();
        self.write_out(out)
    }

    fn write_events(&mut self) {
        for event in self.events.drain(..) {
            for sink in &mut self.sinks {
                sink.event(&event);
            }
            match self.config.format {
                Format::Json => sink::json::write_event(&event, &mut self.line),
                Format::Text => match sink::color::style(&event).filter(|_| self.config.color) {
                    Some(style) => {
                        self.scratch.clear();
                        sink::text::write_event(&event, &mut self.scratch);
                        sink::color::paint(&self.scratch, style, &mut self.line);
                    }
                    None => sink::text::write_event(&event, &mut self.line),
                },
                Format::Raw => {}
            }
        }
    }

    fn write_out(&mut self, out: &mut impl Write) -> Result<(), RunError> {
        for sink in &mut self.sinks {
            sink.flush();
        }
        // After the flush: a hook that found its slot there says so now, not a batch later.
        self.write_notices();
        let written = if self.line.is_empty() {
            Ok(())
        } else {
            out.write_all(self.line.as_bytes())
        };
        written
            .and_then(|()| out.flush())
            .map_err(|source| RunError::Output { source })
    }

    /// Formats `batch` and writes it to `out` in one write, then flushes.
    ///
    /// # Errors
    /// The writers' errors.
    pub fn process(&mut self, batch: &[Captured], out: &mut impl Write) -> Result<(), RunError> {
        self.line.clear();
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
            if let Some(pcap) = &mut self.pcap
                && let Err(error) = pcap.write(frame)
            {
                // Every other output goes on with this frame and the rest; the error ends the
                // run once they have had them.
                self.pcap = None;
                self.pcap_error.get_or_insert(error);
            }
            self.counts.datagrams += 1;
            crate::metrics::count_datagram(&mut self.counts.interfaces, frame.ifindex);
            if self.config.format == Format::Raw {
                let interface = interface_label(self.config, frame.ifindex);
                sink::raw::write_datagram(frame.ts, &interface, &datagram, &mut self.line);
            }
            // With --format raw the decoder still runs when other sinks want records.
            if self.config.format != Format::Raw || !self.sinks.is_empty() {
                let now = self.clock.now(frame.ts);
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
                self.write_events();
            }
        }
        if let Some(pcap) = &mut self.pcap
            && let Err(error) = pcap.flush()
        {
            self.pcap = None;
            self.pcap_error.get_or_insert(error);
        }
        self.write_out(out)?;
        match self.pcap_error.take() {
            Some(error) => Err(error.into()),
            None => Ok(()),
        }
    }

    fn summary(&self, capture: CaptureCounters) -> Summary {
        Summary {
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

    /// Every counter now, with the per-sender ones if `--metrics-per-sender` asks for them.
    #[must_use]
    pub fn snapshot(&self, capture: CaptureCounters) -> Snapshot {
        let mut sinks = Vec::new();
        for sink in &self.sinks {
            sink.counters(&mut sinks);
        }
        Snapshot {
            time: chrono::Utc::now(),
            capture,
            datagrams: self
                .counts
                .interfaces
                .iter()
                .map(|&(ifindex, n)| (interface_label(self.config, ifindex).into_owned(), n))
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
        for sink in &self.sinks {
            sink.stats(&mut line);
        }
        line
    }
}

/// How an interface is named in the raw output and the `interface` label. A file has no
/// interface names: its frames are `file` (or `file:N` for the Nth interface of a pcapng
/// file). [`crate::metrics::OTHER_INTERFACES`] stands for those beyond the count's bound.
fn interface_label(config: &Config, ifindex: u32) -> std::borrow::Cow<'_, str> {
    match (config.interface_name(ifindex), &config.source) {
        (Some(name), _) => name.into(),
        (None, _) if ifindex == crate::metrics::OTHER_INTERFACES => "other".into(),
        (None, Source::File(_)) if ifindex == 0 => "file".into(),
        (None, Source::File(_)) => format!("file:{ifindex}").into(),
        (None, Source::Live) => ifindex.to_string().into(),
    }
}

/// Opens the configured source and says on stderr what it listens on.
fn open_backend(config: &Config) -> Result<Backend, RunError> {
    let ports = config
        .ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",");
    if let Source::File(path) = &config.source {
        let file = PcapFileCapture::open(path)?;
        eprintln!("reading {}, ports {ports}", path.display());
        return Ok(Backend::File(file));
    }
    let xdp = match config.backend {
        BackendChoice::Raw => None,
        BackendChoice::Xdp => Some(Err(())),
        BackendChoice::Auto => Some(Ok(())),
    };
    if let Some(fallback_allowed) = xdp {
        match XdpCapture::open(
            &config.interfaces,
            &config.ports,
            config.xdp_mode.into(),
            config.ring_bytes,
        ) {
            Ok(capture) => {
                for (name, mode) in capture.attached() {
                    eprintln!(
                        "listening on {name} (xdp, {} mode), ports {ports}",
                        mode.as_str()
                    );
                }
                return Ok(Backend::Xdp(Box::new(capture)));
            }
            Err(error) if fallback_allowed.is_ok() => {
                eprintln!("netcon-sniff: XDP unavailable: {error}; using raw sockets");
            }
            Err(error) => return Err(CaptureError::from(error).into()),
        }
    }
    let capture = RawCapture::open(
        &config.interfaces,
        &config.ports,
        config.ring_bytes,
        config.budget.clone(),
    )
    .map_err(CaptureError::from)?;
    for interface in &config.interfaces {
        eprintln!("listening on {} (raw), ports {ports}", interface.name);
    }
    Ok(Backend::Raw(capture))
}

/// Adds the configured outputs besides stdout. Runs as root, before any drop.
fn add_sinks(config: &Config, pipeline: &mut Pipeline<'_>) -> Result<(), RunError> {
    if let Some(options) = &config.log_dir {
        // Before the drop: what the user will need is created for it, or refused now.
        let user = config
            .user
            .as_deref()
            .map(crate::privileges::lookup)
            .transpose()?;
        pipeline.add_sink(Box::new(sink::files::LogDir::open_as(
            options.clone(),
            user.as_ref(),
            config.budget.clone(),
        )?));
    }
    for url in &config.forward {
        pipeline.add_sink(Box::new(sink::syslog::Forwarder::start(url)?));
    }
    for url in &config.nats.urls {
        pipeline.add_sink(Box::new(sink::nats::NatsForwarder::start(
            url,
            config.nats.stream.as_ref(),
            config.budget.clone(),
        )?));
    }
    if let Some(options) = &config.on_panic {
        pipeline.add_sink(Box::new(sink::hook::PanicHook::new(
            options.clone(),
            config.budget.clone(),
        )));
    }
    Ok(())
}

/// Captures from `config`'s source and writes records to stdout until `shutdown` completes
/// (or a capture file ends); then drains what is already captured and returns the summary.
///
/// # Errors
/// [`RunError`] when capture cannot start or fails, or output cannot be written.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<Summary, RunError> {
    let _promisc = promisc_guards(&config)?;
    let mut backend = open_backend(&config)?;
    let mut pipeline = open_pipeline(&config)?;
    // Bound before root is dropped: the port may be privileged.
    let mut metrics = config.metrics.map(MetricsServer::start).transpose()?;
    let mut signals = Signals::new().map_err(|source| RunError::Signals { source })?;
    // Still privileged: the first read of the counters works even where reading BPF maps
    // will need CAP_BPF once root is dropped.
    let mut losses = LossWatch::start(&config, &mut backend).await;
    // Everything privileged is done: the descriptors keep working without root.
    if let Some(user) = &config.user {
        crate::privileges::drop_to(user)?;
    }
    let mut stats_timer = config.stats_interval.map(interval_from_now);

    let mut systemd = Systemd::from_env();
    systemd.ready(&ready_status(&config, metrics.as_ref()));

    let stdout = io::stdout();
    let mut batch = Vec::with_capacity(crate::capture::MAX_BATCH);
    tokio::pin!(shutdown);
    let ended: Result<(), RunError> = loop {
        batch.clear();
        let timer = pipeline.poll_at();
        // The select only says what woke us; the work happens below, free of its borrows.
        let wake = tokio::select! {
            biased;
            () = &mut shutdown => Wake::Shutdown,
            _ = signals.hangup.recv() => Wake::Hangup,
            _ = signals.user1.recv() => Wake::Stats,
            () = tick(stats_timer.as_mut()) => Wake::Stats,
            () = systemd.watchdog_due() => Wake::Watchdog,
            reply = scrape_request(metrics.as_mut()) => Wake::Scrape(reply),
            // Ahead of frames: a flood that loses frames must not delay saying so.
            () = tick(losses.timer.as_mut()) => Wake::Losses,
            () = sleep_until(timer) => Wake::Timer,
            more = backend.recv(&mut batch) => match more {
                Ok(more) => Wake::Frames { more },
                Err(error) => Wake::Failed(error),
            },
        };
        let done = match wake {
            Wake::Shutdown => break Ok(()),
            Wake::Hangup => {
                pipeline.reopen();
                Ok(())
            }
            Wake::Stats => {
                with_counters(&mut backend, "no stats line", |counters| {
                    eprintln!("{}", pipeline.stats_report(counters));
                });
                Ok(())
            }
            Wake::Watchdog => {
                systemd.watchdog();
                Ok(())
            }
            Wake::Scrape(reply) => {
                // The scrape may have given up waiting: nothing to do then.
                with_counters(&mut backend, "scrape not answered", |counters| {
                    drop(reply.send(pipeline.snapshot(counters)));
                });
                Ok(())
            }
            Wake::Losses => {
                losses
                    .check(&mut backend, &mut pipeline, &mut stdout.lock())
                    .await
            }
            Wake::Timer => pipeline.tick(&mut stdout.lock()),
            Wake::Frames { more } => {
                let done = pipeline.process(&batch, &mut stdout.lock());
                if done.is_ok() && !more {
                    break Ok(());
                }
                done
            }
            Wake::Failed(error) => break Err(error.into()),
        };
        if let Err(error) = done {
            break Err(error);
        }
    };
    systemd.stopping();
    drop(metrics);
    // Whatever ended the loop, what is captured and held still goes to every output that works:
    // a closed stdout or a failed -w must not cost the files, syslog or the hook their records.
    let mut out = FirstError::new(stdout.lock());
    if ended.is_ok() {
        batch.clear();
        if let Err(error) = backend.drain(&mut batch) {
            tracing::warn!(%error, "cannot read what was left in the capture buffer");
        }
        keep_going(pipeline.process(&batch, &mut out));
    }
    keep_going(losses.check(&mut backend, &mut pipeline, &mut out).await);
    keep_going(pipeline.finish(&mut out));
    keep_going(pipeline.close(&mut out));
    ended?;
    if let Some(source) = out.error {
        return Err(RunError::Output { source });
    }
    let counters = losses.final_counters(&mut backend)?;
    Ok(pipeline.summary(counters))
}

/// Appends the output line of one of netcon-sniff's own notices in `format`.
fn write_notice(format: Format, notice: &Notice, line: &mut String) {
    match format {
        Format::Json => sink::json::write_notice(notice, line),
        Format::Text | Format::Raw => sink::text::write_notice(notice, line),
    }
}

/// The pipeline with every output `config` asks for, files opened (still privileged).
fn open_pipeline(config: &Config) -> Result<Pipeline<'_>, RunError> {
    let pcap = config
        .write
        .as_deref()
        .map(PcapFileWriter::create)
        .transpose()?;
    let mut pipeline = Pipeline::new(config, pcap);
    add_sinks(config, &mut pipeline)?;
    Ok(pipeline)
}

/// A timer that first fires `every` from now, then every `every`, never catching up in bursts.
fn interval_from_now(every: Duration) -> tokio::time::Interval {
    let mut timer = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    timer
}

/// Puts the interfaces in promiscuous mode if asked, for as long as the guards live.
fn promisc_guards(config: &Config) -> Result<Vec<PromiscGuard>, RunError> {
    if !config.promisc {
        return Ok(Vec::new());
    }
    let guards = config
        .interfaces
        .iter()
        .map(|i| PromiscGuard::new(&i.name, i.ifindex))
        .collect::<Result<_, _>>()?;
    Ok(guards)
}

/// Hands the backend's counters to `report`. A report is not worth the run: counters that cannot
/// be read (BPF maps after --user where reading them needs `CAP_BPF`) are only logged, and a
/// scrape left unanswered fails with 503.
fn with_counters(backend: &mut Backend, what: &'static str, report: impl FnOnce(CaptureCounters)) {
    match backend.counters() {
        Ok(counters) => report(counters),
        Err(error) => tracing::warn!(%error, "{what}"),
    }
}

/// Logs an error met while finishing (the run's own error, if any, is the one reported).
fn keep_going(result: Result<(), RunError>) {
    if let Err(error) = result {
        tracing::debug!(%error, "while finishing");
    }
}

/// A writer that keeps its first error and swallows every write after it, so that finishing can
/// go on to the other outputs.
struct FirstError<W> {
    inner: W,
    error: Option<io::Error>,
}

impl<W: Write> FirstError<W> {
    fn new(inner: W) -> Self {
        Self { inner, error: None }
    }
}

impl<W: Write> Write for FirstError<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.error.is_none()
            && let Err(error) = self.inner.write_all(buf)
        {
            self.error = Some(error);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.error.is_none()
            && let Err(error) = self.inner.flush()
        {
            self.error = Some(error);
        }
        Ok(())
    }
}

/// Reads the loss counters (the backend's and the interfaces') every [`LOSS_POLL_INTERVAL`]
/// while capturing live, and hands them to the pipeline, which turns growth into notices.
struct LossWatch {
    timer: Option<tokio::time::Interval>,
    interfaces: Option<crate::capture::ifstats::InterfaceDrops>,
    /// What the backend's counters cover: its interfaces' names, comma-separated.
    label: String,
    /// The backend's counters could not be read last time (and that was logged).
    unreadable: bool,
    /// The backend's counters as last read.
    last: Option<CaptureCounters>,
}

impl LossWatch {
    async fn start(config: &Config, backend: &mut Backend) -> Self {
        if matches!(backend, Backend::File(_)) {
            return Self {
                timer: None,
                interfaces: None,
                label: String::new(),
                unreadable: false,
                last: None,
            };
        }
        let interfaces =
            match crate::capture::ifstats::InterfaceDrops::open(&config.interfaces).await {
                Ok(reader) => Some(reader),
                Err(error) => {
                    tracing::warn!(%error, "frames the interfaces drop will not be reported");
                    None
                }
            };
        Self {
            timer: Some(interval_from_now(LOSS_POLL_INTERVAL)),
            interfaces,
            label: config
                .interfaces
                .iter()
                .map(|i| i.name.as_str())
                .collect::<Vec<_>>()
                .join(","),
            unreadable: false,
            last: backend.counters().ok(),
        }
    }

    /// The counters for the exit summary: read now, else (unreadable after `--user`) the last
    /// ones read, since everything went out already.
    fn final_counters(&self, backend: &mut Backend) -> Result<CaptureCounters, RunError> {
        match (backend.counters(), self.last) {
            (Ok(counters), _) => Ok(counters),
            (Err(error), Some(last)) => {
                tracing::warn!(
                    %error,
                    "capture counters unreadable at exit; the summary shows the last ones read"
                );
                Ok(last)
            }
            (Err(error), None) => Err(error.into()),
        }
    }

    async fn check(
        &mut self,
        backend: &mut Backend,
        pipeline: &mut Pipeline<'_>,
        out: &mut impl Write,
    ) -> Result<(), RunError> {
        if self.timer.is_none() {
            return Ok(());
        }
        // Counters that cannot be read (BPF maps after --user where reading them needs CAP_BPF)
        // cost the loss notices, never the run.
        let mut losses: Vec<(LossReason, String, u64)> = match backend.counters() {
            Ok(counters) => {
                self.unreadable = false;
                self.last = Some(counters);
                counters
                    .losses()
                    .into_iter()
                    .map(|(reason, frames)| (reason, self.label.clone(), frames))
                    .collect()
            }
            Err(error) => {
                if !self.unreadable {
                    self.unreadable = true;
                    tracing::warn!(%error, "capture counters unreadable: losses are not reported");
                }
                Vec::new()
            }
        };
        if let Some(interfaces) = &mut self.interfaces {
            losses.extend(
                interfaces
                    .read()
                    .await
                    .into_iter()
                    .map(|(name, frames)| (LossReason::Interface, name.to_owned(), frames)),
            );
        }
        pipeline.capture_lost(backend.take_queue_losses());
        pipeline.capture_losses(losses, out)
    }
}

/// What woke the main loop.
enum Wake {
    Shutdown,
    Hangup,
    Stats,
    Watchdog,
    Scrape(ScrapeRequest),
    Timer,
    Losses,
    Frames { more: bool },
    Failed(CaptureError),
}

/// The signals `run` handles itself (SIGINT and SIGTERM come through `shutdown`).
struct Signals {
    /// SIGHUP: reopen log files.
    hangup: tokio::signal::unix::Signal,
    /// SIGUSR1: print a stats line.
    user1: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            hangup: signal(SignalKind::hangup())?,
            user1: signal(SignalKind::user_defined1())?,
        })
    }
}

/// Waits for the next tick of `timer`, or forever without one.
async fn tick(timer: Option<&mut tokio::time::Interval>) {
    match timer {
        Some(timer) => {
            timer.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// The next scrape to answer, or never without `--metrics`.
async fn scrape_request(server: Option<&mut MetricsServer>) -> ScrapeRequest {
    match server {
        Some(server) => server.request().await,
        None => std::future::pending().await,
    }
}

/// The status systemd shows once capture is attached.
fn ready_status(config: &Config, metrics: Option<&MetricsServer>) -> String {
    let mut status = match &config.source {
        Source::File(path) => format!("reading {}", path.display()),
        Source::Live => {
            let names: Vec<&str> = config.interfaces.iter().map(|i| i.name.as_str()).collect();
            format!("capturing on {}", names.join(", "))
        }
    };
    if let Some(server) = metrics {
        use std::fmt::Write as _;
        let _ = write!(
            status,
            "; metrics at http://{}/metrics",
            server.local_addr()
        );
    }
    status
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::LinkType;
    use crate::config::{Interface, XdpModeChoice};
    use bytes::Bytes;
    use etherparse::PacketBuilder;

    fn config() -> Config {
        Config {
            interfaces: vec![Interface {
                name: "c0".into(),
                ifindex: 7,
            }],
            ports: vec![6666],
            promisc: false,
            xdp_mode: XdpModeChoice::Auto,
            format: Format::Raw,
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

    #[test]
    fn batch_becomes_one_line_per_datagram_and_counts_malformed() {
        let config = config();
        let mut pipeline = Pipeline::new(&config, None);
        let ts = chrono::DateTime::from_timestamp(0, 1000).unwrap();
        let batch = [
            Captured {
                ts,
                ifindex: 7,
                wire_len: 0,
                link: LinkType::Ethernet,
                bytes: udp_frame(b"one\n"),
            },
            Captured {
                ts,
                ifindex: 8,
                wire_len: 0,
                link: LinkType::Ethernet,
                bytes: Bytes::from_static(b"junk"),
            },
            Captured {
                ts,
                ifindex: 9,
                wire_len: 0,
                link: LinkType::Ethernet,
                bytes: udp_frame(b"two"),
            },
        ];
        let mut out = Vec::new();
        pipeline.process(&batch, &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "1970-01-01T00:00:00.000001Z c0 10.9.0.10:6665 > 10.9.0.99:6666 one\\n\n\
             1970-01-01T00:00:00.000001Z 9 10.9.0.10:6665 > 10.9.0.99:6666 two\n"
        );
        assert_eq!(pipeline.counts.datagrams, 2);
        assert_eq!(pipeline.counts.malformed, 1);
    }

    /// A sink that keeps the notices it is handed.
    struct Notices(std::rc::Rc<std::cell::RefCell<Vec<Notice>>>);

    impl Sink for Notices {
        fn event(&mut self, _event: &Event) {}
        fn notice(&mut self, notice: &Notice) {
            self.0.borrow_mut().push(notice.clone());
        }
    }

    #[test]
    fn loss_counter_growth_becomes_one_notice_per_reason_and_interface() {
        let config = Config {
            format: Format::Json,
            ..config()
        };
        let mut pipeline = Pipeline::new(&config, None);
        let seen = std::rc::Rc::default();
        pipeline.add_sink(Box::new(Notices(std::rc::Rc::clone(&seen))));
        let mut out = Vec::new();
        let ring = |n| (LossReason::RingFull, "c0".to_owned(), n);
        let iface = |n| (LossReason::Interface, "c0".to_owned(), n);
        pipeline
            .capture_losses([ring(0), iface(0)], &mut out)
            .unwrap();
        assert!(out.is_empty());
        pipeline
            .capture_losses([ring(15), iface(0)], &mut out)
            .unwrap();
        pipeline
            .capture_losses([ring(15), iface(2)], &mut out)
            .unwrap();
        // No growth, no notice; a counter that went back (a reset) starts over silently.
        pipeline
            .capture_losses([ring(15), iface(1)], &mut out)
            .unwrap();
        pipeline
            .capture_losses([ring(20), iface(1)], &mut out)
            .unwrap();
        let lines: Vec<serde_json::Value> = String::from_utf8(out)
            .unwrap()
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
        assert_eq!(seen.borrow().len(), 3, "every sink gets the notices");
        assert!(
            pipeline
                .stats_line(&CaptureCounters::File(
                    crate::capture::FileCounters::default()
                ))
                .contains(" capture_lost=22 ")
        );
    }

    #[test]
    fn first_error_keeps_the_error_and_lets_finishing_go_on() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut out = FirstError::new(Broken);
        assert!(out.write_all(b"one").is_ok());
        assert!(out.write_all(b"two").is_ok());
        assert!(out.flush().is_ok());
        assert_eq!(out.error.map(|e| e.kind()), Some(io::ErrorKind::BrokenPipe));
    }
}
