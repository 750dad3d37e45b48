//! Sinks format and deliver records. They never parse.
//!
//! stdout gets `text`, `json` or `raw` lines (see [`text`], [`json`], [`raw`]); the other
//! destinations (per-sender files, syslog forwarding, the panic hook) implement [`Sink`] and
//! get every decoded event as well.

pub mod color;
pub mod drops;
pub mod files;
pub mod hook;
pub mod json;
pub mod nats;
pub mod raw;
pub mod syslog;
pub mod text;
pub mod worker;

// Escaping serves records as well as sinks, so it lives below both; this keeps `sink::escape`.
pub use crate::escape;

use std::{fmt::Write as _, time::Instant};

use crate::{netconsole::Event, notice::Notice};

/// A destination for decoded events besides stdout.
///
/// A sink never stops the collector: it reports its own failures (a `tracing` warning, a
/// counter in [`Sink::stats`]) and carries on, because the next record may be the one that
/// matters. It must not block on the network: a network sink queues, bounded, and counts what
/// it drops.
pub trait Sink {
    /// Takes one event.
    fn event(&mut self, event: &Event);
    /// The end of a batch: deliver what is buffered.
    fn flush(&mut self) {}
    /// Reopen files (on SIGHUP, after logrotate moved them).
    fn reopen(&mut self) {}
    /// The run is over: deliver what is queued, within a bounded time.
    fn close(&mut self) {}
    /// Appends this sink's counters: the one source of the stats line, `--stats-format json`
    /// and `--metrics`.
    fn counters(&self, _out: &mut Vec<SinkCounter>) {}
    /// Appends this sink's counters for the stats line, as ` name=value` pairs.
    fn stats(&self, out: &mut String) {
        let mut counters = Vec::new();
        self.counters(&mut counters);
        for c in counters {
            let _ = write!(out, " {}={}", c.name, c.value);
        }
    }
    /// Takes one of netcon-sniff's own notices (frames lost, a hook skipped). Ignored unless
    /// the sink writes them somewhere a person reads.
    fn notice(&mut self, _notice: &Notice) {}
    /// Moves the notices this sink has to report (a hook it skipped) to `out`; the pipeline
    /// writes them to stdout and hands them to every sink.
    fn take_notices(&mut self, _out: &mut Vec<Notice>) {}
    /// When this sink next needs [`Sink::flush`] though no event arrives (a queued hook waiting
    /// for a slot); `None` when it does not.
    fn poll_at(&self) -> Option<Instant> {
        None
    }
}

/// Whether a [`SinkCounter`] counts events or measures a level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CounterKind {
    /// Only ever grows (a Prometheus counter, `netcon_<name>_total`).
    Total,
    /// Goes up and down (a Prometheus gauge, `netcon_<name>`).
    Gauge,
}

/// One counter of a sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkCounter {
    /// Its name on the stats line and in JSON (`forward_sent`): lowercase, digits and `_`.
    pub name: &'static str,
    /// One sentence for the metric's HELP line.
    pub help: &'static str,
    /// Counter or gauge.
    pub kind: CounterKind,
    /// The value.
    pub value: u64,
    /// Which instance of the sink, when there can be several: a label name and its value
    /// (`("url", "syslog+tcp://[::1]:514")`).
    pub instance: Option<(&'static str, String)>,
}

impl SinkCounter {
    /// A count of events.
    #[must_use]
    pub fn total(name: &'static str, help: &'static str, value: u64) -> Self {
        Self {
            name,
            help,
            kind: CounterKind::Total,
            value,
            instance: None,
        }
    }

    /// A level.
    #[must_use]
    pub fn gauge(name: &'static str, help: &'static str, value: u64) -> Self {
        Self {
            kind: CounterKind::Gauge,
            ..Self::total(name, help, value)
        }
    }

    /// The same counter, labelled with the sink instance it belongs to.
    #[must_use]
    pub fn of(mut self, label: &'static str, value: impl Into<String>) -> Self {
        self.instance = Some((label, value.into()));
        self
    }
}

/// A `--forward` destination: a syslog server or a NATS cluster, told apart by the scheme.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwardTarget {
    /// `syslog+udp://` or `syslog+tcp://`.
    Syslog(syslog::ForwardUrl),
    /// `nats://` or `tls://`.
    Nats(nats::NatsUrl),
}

impl std::str::FromStr for ForwardTarget {
    type Err = String;
    fn from_str(url: &str) -> Result<Self, Self::Err> {
        let scheme = url.split_once("://").map_or("", |(scheme, _)| scheme);
        if scheme.eq_ignore_ascii_case("nats") || scheme.eq_ignore_ascii_case("tls") {
            return url
                .parse()
                .map(Self::Nats)
                .map_err(|e: nats::NatsError| e.to_string());
        }
        url.parse()
            .map(Self::Syslog)
            .map_err(|e: syslog::SyslogError| {
                if scheme.to_ascii_lowercase().starts_with("syslog") {
                    e.to_string()
                } else {
                    format!("{e}; or nats://HOST[:PORT][,HOST[:PORT]...][/PREFIX] for NATS")
                }
            })
    }
}
