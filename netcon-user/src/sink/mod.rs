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
pub mod nats;
pub mod raw;
pub mod syslog;
pub mod text;
pub mod worker;

use crate::netconsole::Event;

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
