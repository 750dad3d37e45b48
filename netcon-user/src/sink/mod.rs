//! Sinks format and deliver records. They never parse.
//!
//! Every output is a [`Sink`]: stdout ([`stdout`]: `text`, `json` or `raw` lines, formatted by
//! [`text`], [`json`] and [`raw`]), the `-w` capture file ([`pcap`]), per-sender files
//! ([`files`]), syslog and NATS forwarding ([`syslog`], [`nats`]) and the panic hook
//! ([`hook`]). The pipeline hands each the matched frames, the decoded events and
//! netcon-sniff's own notices it asks for, and knows no format. A new output is one more
//! module here implementing [`Sink`], added where `run` builds the pipeline.

pub mod color;
pub mod drops;
pub mod files;
pub mod hook;
pub mod json;
pub mod nats;
pub mod pcap;
pub mod raw;
pub mod stdout;
pub mod syslog;
pub mod text;
mod url;
pub mod worker;

// Escaping serves records as well as sinks, so it lives below both; this keeps `sink::escape`.
pub use crate::escape;

use std::{fmt::Write as _, io, time::Instant};

use crate::{capture::Captured, netconsole::Event, notice::Notice, wire::Datagram};

/// A destination for what netcon-sniff catches: decoded events, and matched frames if it asks.
///
/// A sink never stops the collector: it reports its own failures (a `tracing` warning, a
/// counter in [`Sink::stats`]) and carries on, because the next record may be the one that
/// matters. The outputs a person started netcon-sniff for (stdout, `-w`) are the exception:
/// their failure ends the run through [`Sink::take_error`], once every other output has had
/// the batch. A sink must not block on the network: a network sink queues, bounded, and counts
/// what it drops.
pub trait Sink {
    /// Takes one event (only if [`Sink::wants_events`]).
    fn event(&mut self, event: &Event);
    /// Whether this sink takes decoded events. When no sink does (`--format raw` alone) the
    /// decoder does not run.
    fn wants_events(&self) -> bool {
        true
    }
    /// Takes one matched frame, undecoded (only if [`Sink::wants_frames`]).
    fn frame(&mut self, _frame: &Captured, _datagram: &Datagram<'_>) {}
    /// Whether this sink takes matched frames (`--format raw`, `-w`).
    fn wants_frames(&self) -> bool {
        false
    }
    /// The end of a batch: deliver what is buffered. Called again in the same batch when
    /// notices went round after it, so that they go out too.
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
    /// hands them to every sink.
    fn take_notices(&mut self, _out: &mut Vec<Notice>) {}
    /// Takes a notice that closing gave rise to (messages a forwarder could not deliver in its
    /// grace period). Every sink is closed by then: only one that can still write (stdout)
    /// writes it, at once.
    fn notice_after_close(&mut self, _notice: &Notice) {}
    /// The failure that ends the run, handed over once: stdout could not be written, `-w`
    /// failed. `None` for a sink that reports its failures and goes on.
    fn take_error(&mut self) -> Option<OutputError> {
        None
    }
    /// When this sink next needs [`Sink::flush`] though no event arrives (a queued hook waiting
    /// for a slot); `None` when it does not.
    fn poll_at(&self) -> Option<Instant> {
        None
    }
}

/// Why an output whose failure ends the run failed.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// stdout could not be written (a closed pipe too: `main` exits 0 on it).
    #[error("writing output: {source}")]
    Stdout {
        #[source]
        source: io::Error,
    },
    /// `-w` could not be written.
    #[error(transparent)]
    Pcap(#[from] pcap::PcapWriteError),
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
