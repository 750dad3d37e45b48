//! The pipeline: capture → wire → sink, and its async shell.

use std::{
    future::Future,
    io::{self, Write},
    time::Instant,
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
    config::{BackendChoice, Config, Format, Source},
    netconsole::{Decoder, DecoderConfig, DecoderStats, Event, Incoming},
    sink::{self, Sink},
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
}

/// Counts kept by the pipeline.
#[derive(Debug, Clone, Copy, Default)]
struct PipelineCounts {
    datagrams: u64,
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
}

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
            decoder: Decoder::new(DecoderConfig::default()),
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
        }
    }

    /// Adds a destination that gets every decoded event.
    pub fn add_sink(&mut self, sink: Box<dyn Sink>) {
        self.sinks.push(sink);
    }

    /// Lets every sink deliver what it has queued (at exit), before the counters are read.
    pub fn close(&mut self) {
        for sink in &mut self.sinks {
            sink.close();
        }
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
        match self.clock {
            Clock::Live => self.decoder.poll_at(),
            Clock::File { .. } => None,
        }
    }

    /// Fires the decoder's due timers and writes what they produce.
    ///
    /// # Errors
    /// The writer's error.
    pub fn tick(&mut self, out: &mut impl Write) -> Result<(), RunError> {
        self.line.clear();
        self.decoder.poll(Instant::now(), &mut self.events);
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
            if let Some(pcap) = &mut self.pcap {
                pcap.write(frame)?;
            }
            self.counts.datagrams += 1;
            if self.config.format == Format::Raw {
                // A file has no interface names: its frames are `file` (or `file:N` for the
                // Nth interface of a pcapng file).
                let label;
                let interface = match (
                    self.config.interface_name(frame.ifindex),
                    &self.config.source,
                ) {
                    (Some(name), _) => name,
                    (None, Source::File(_)) if frame.ifindex == 0 => "file",
                    (None, Source::File(_)) => {
                        label = format!("file:{}", frame.ifindex);
                        &label
                    }
                    (None, Source::Live) => {
                        label = frame.ifindex.to_string();
                        &label
                    }
                };
                sink::raw::write_datagram(frame.ts, interface, &datagram, &mut self.line);
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
        if let Some(pcap) = &mut self.pcap {
            pcap.flush()?;
        }
        self.write_out(out)
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
            "{capture} lost={} | datagrams={} malformed_frames={} other_ports={} denied={} | \
             records={} senders={} fragments={} reassembled={} incomplete={} partial={} \
             records_lost={} msgid_lost={} reboots={} duplicates={} malformed={} panics={}",
            capture.lost(),
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
        );
        for sink in &self.sinks {
            sink.stats(&mut line);
        }
        line
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
            config.xdp_mode,
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
    let capture = RawCapture::open(&config.interfaces, &config.ports, config.ring_bytes)
        .map_err(CaptureError::from)?;
    for interface in &config.interfaces {
        eprintln!("listening on {} (raw), ports {ports}", interface.name);
    }
    Ok(Backend::Raw(capture))
}

/// Captures from `config`'s source and writes records to stdout until `shutdown` completes
/// (or a capture file ends); then drains what is already captured and returns the summary.
///
/// # Errors
/// [`RunError`] when capture cannot start or fails, or output cannot be written.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<Summary, RunError> {
    let _promisc: Vec<PromiscGuard> = if config.promisc {
        config
            .interfaces
            .iter()
            .map(|i| PromiscGuard::new(&i.name, i.ifindex))
            .collect::<Result<_, _>>()?
    } else {
        Vec::new()
    };
    let mut backend = open_backend(&config)?;
    let pcap = config
        .write
        .as_deref()
        .map(PcapFileWriter::create)
        .transpose()?;
    let mut pipeline = Pipeline::new(&config, pcap);
    if let Some(options) = &config.log_dir {
        pipeline.add_sink(Box::new(sink::files::LogDir::open(options.clone())?));
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
        pipeline.add_sink(Box::new(sink::hook::PanicHook::new(options.clone())));
    }
    let mut signals = Signals::new().map_err(|source| RunError::Signals { source })?;
    // Everything privileged is done: the descriptors keep working without root.
    if let Some(user) = &config.user {
        crate::privileges::drop_to(user)?;
    }
    let mut stats_timer = config.stats_interval.map(|every| {
        let mut timer = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        timer
    });

    let stdout = io::stdout();
    let mut batch = Vec::with_capacity(crate::capture::xdp::MAX_BATCH);
    tokio::pin!(shutdown);
    loop {
        batch.clear();
        let timer = pipeline.poll_at();
        // The select only says what woke us; the work happens below, free of its borrows.
        let wake = tokio::select! {
            biased;
            () = &mut shutdown => Wake::Shutdown,
            _ = signals.hangup.recv() => Wake::Hangup,
            _ = signals.user1.recv() => Wake::Stats,
            () = tick(stats_timer.as_mut()) => Wake::Stats,
            () = sleep_until(timer) => Wake::Timer,
            more = backend.recv(&mut batch) => match more {
                Ok(more) => Wake::Frames { more },
                Err(error) => Wake::Failed(error),
            },
        };
        match wake {
            Wake::Shutdown => break,
            Wake::Hangup => pipeline.reopen(),
            Wake::Stats => eprintln!(
                "netcon-sniff: stats: {}",
                pipeline.stats_line(&backend.counters()?)
            ),
            Wake::Timer => pipeline.tick(&mut stdout.lock())?,
            Wake::Frames { more } => {
                pipeline.process(&batch, &mut stdout.lock())?;
                if !more {
                    break;
                }
            }
            Wake::Failed(error) => {
                // What was decoded so far still goes out before the error is reported.
                pipeline.finish(&mut stdout.lock())?;
                return Err(error.into());
            }
        }
    }
    batch.clear();
    backend.drain(&mut batch)?;
    pipeline.process(&batch, &mut stdout.lock())?;
    pipeline.finish(&mut stdout.lock())?;
    pipeline.close();
    let counters = backend.counters()?;
    Ok(pipeline.summary(counters))
}

/// What woke the main loop.
enum Wake {
    Shutdown,
    Hangup,
    Stats,
    Timer,
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
}
