//! Sinks format and deliver records. They never parse.
//!
//! stdout gets `text`, `json` or `raw` lines (see [`text`], [`json`], [`raw`]); the other
//! destinations (per-sender files, syslog forwarding, the panic hook) implement [`Sink`] and
//! get every decoded event as well.

pub mod color;
pub mod escape;
pub mod files;
pub mod hook;
pub mod json;
pub mod raw;
pub mod syslog;
pub mod text;

use std::time::Instant;

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
    /// Appends this sink's counters for the stats line, as ` name=value` pairs.
    fn stats(&self, _out: &mut String) {}
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
