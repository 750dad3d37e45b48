//! What netcon-sniff itself has to say in the output stream, beside the senders' records.
//!
//! A loss the reader of a log cannot see is worse than the loss: someone reading one machine's
//! file must be able to tell that a gap may be there. So frames lost before decoding and panic
//! hooks that were skipped, delayed or killed, and messages a forwarder dropped are [`Notice`]s, written to stdout (text and JSON)
//! and handed to every sink (files, syslog), not only counted on the stats line.

use std::{
    fmt,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    str::FromStr,
    time::Duration,
};

use chrono::{DateTime, Utc};

/// Where frames were lost before netcon-sniff could decode them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LossReason {
    /// The XDP program found the ring buffer to userspace full.
    RingFull,
    /// The XDP program could not copy a frame into the ring buffer.
    CopyFailed,
    /// A packet socket's receive buffer was full (`PACKET_STATISTICS` `tp_drops`).
    Socket,
    /// The capture backend's own queue to the pipeline was full.
    QueueFull,
    /// The interface itself lost frames before any program saw them (its missed, FIFO and
    /// overrun counters grew while capturing); these may include traffic other than netconsole.
    Interface,
}

impl LossReason {
    /// The JSON `reason` value.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RingFull => "ring_full",
            Self::CopyFailed => "copy_failed",
            Self::Socket => "socket",
            Self::QueueFull => "queue_full",
            Self::Interface => "interface",
        }
    }

    /// The words in the text line's parentheses.
    #[must_use]
    pub fn describe(self) -> &'static str {
        match self {
            Self::RingFull => "ring buffer full",
            Self::CopyFailed => "copy into the ring buffer failed",
            Self::Socket => "socket buffer full",
            Self::QueueFull => "capture queue full",
            Self::Interface => "missed by the interface, any traffic",
        }
    }
}

/// Frames lost before decoding, noticed since the previous notice of the same reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureLost {
    /// When the loss was noticed.
    pub noticed: DateTime<Utc>,
    /// The interface (or the comma-separated interfaces a counter covers).
    pub interface: String,
    /// Where they were lost.
    pub reason: LossReason,
    /// How many frames.
    pub frames: u64,
    /// Whose frames they were, where the capture knows it: a capture queue drops frames of a
    /// known source (reason `queue_full` of the raw backend); every other loss is `None` (the
    /// frames were lost unread).
    pub sender: Option<SourcePrefix>,
}

/// Who sent frames, as far as a capture queue tells senders apart: an IPv4 address, or the /64
/// an IPv6 address is in (a host picks the low 64 bits of its IPv6 addresses freely, so one
/// host counts as one /64, whatever addresses it uses in it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourcePrefix {
    /// The address, IPv6 with its low 64 bits zero.
    addr: IpAddr,
}

impl SourcePrefix {
    /// Prefix length of an IPv6 source: 64.
    pub const IPV6_LEN: u8 = 64;

    /// The source `addr` belongs to.
    #[must_use]
    pub fn of(addr: IpAddr) -> Self {
        Self {
            addr: match addr {
                IpAddr::V4(_) => addr,
                IpAddr::V6(v6) => {
                    IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & !u128::from(u64::MAX)))
                }
            },
        }
    }

    /// The address (IPv6: the network address of the /64).
    #[must_use]
    pub fn addr(self) -> IpAddr {
        self.addr
    }
}

/// `10.1.0.5`, or `fd00:91::/64`.
impl fmt::Display for SourcePrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.addr {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/{}", Self::IPV6_LEN),
        }
    }
}

/// Reads what [`Display`](fmt::Display) writes (an IPv6 address alone counts as its /64).
impl FromStr for SourcePrefix {
    type Err = std::net::AddrParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.strip_suffix("/64") {
            Some(v6) => v6.parse::<Ipv6Addr>().map(|a| Self::of(a.into())),
            None => s.parse().map(Self::of),
        }
    }
}

/// Why a panic hook did not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// The sender's hook already ran within `--on-panic-interval`.
    RateLimited,
    /// Every slot was busy and the queue of waiting hooks was full.
    QueueFull,
    /// The memory budget had no room for the hook's state.
    Memory,
}

impl SkipReason {
    /// The JSON `reason` value.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RateLimited => "rate_limited",
            Self::QueueFull => "queue_full",
            Self::Memory => "memory",
        }
    }

    /// The words in the text line's parentheses.
    #[must_use]
    pub fn describe(self) -> &'static str {
        match self {
            Self::RateLimited => "already ran for this sender within --on-panic-interval",
            Self::QueueFull => "every slot busy and the queue full",
            Self::Memory => "memory budget full",
        }
    }
}

/// What happened to a panic hook that did not simply run at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookOutcome {
    /// Not run.
    Skipped(SkipReason),
    /// Started after waiting this long for a free slot (or for the sender's previous hook).
    Late {
        /// Time in the queue.
        waited: Duration,
    },
    /// Still running after `--on-panic-timeout`: its process group was killed.
    TimedOut {
        /// The timeout.
        after: Duration,
    },
}

/// A panic hook that was skipped, late or killed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookNotice {
    /// When it happened.
    pub at: DateTime<Utc>,
    /// The sender whose panic it was for.
    pub sender: SocketAddr,
    /// What happened.
    pub outcome: HookOutcome,
}

/// Messages a forwarder (`--forward`) dropped: its queue or the memory budget was full while
/// the server was slow or away, or they were still queued when the shutdown grace ran out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardLost {
    /// When the drops were noticed.
    pub noticed: DateTime<Utc>,
    /// The forwarder's URL.
    pub url: String,
    /// How many messages were dropped since the previous notice of this forwarder.
    pub messages: u64,
    /// When the first of them was dropped.
    pub first_dropped: DateTime<Utc>,
}

/// One notice of netcon-sniff's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// Frames lost before decoding.
    CaptureLost(CaptureLost),
    /// A panic hook skipped, late or killed.
    Hook(HookNotice),
    /// Messages a forwarder dropped.
    ForwardLost(ForwardLost),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv6_source_is_its_64_and_reads_back() {
        let v6 = SourcePrefix::of("fd00:91::1:2".parse().unwrap());
        assert_eq!(v6, SourcePrefix::of("fd00:91::ffff:0:0:9".parse().unwrap()));
        assert_eq!(v6.to_string(), "fd00:91::/64");
        assert_eq!("fd00:91::/64".parse::<SourcePrefix>(), Ok(v6));
        let v4 = SourcePrefix::of([10, 1, 0, 5].into());
        assert_ne!(v4, SourcePrefix::of([10, 1, 0, 6].into()));
        assert_eq!(v4.to_string(), "10.1.0.5");
        assert_eq!("10.1.0.5".parse::<SourcePrefix>(), Ok(v4));
        assert!("10.1.0.5/64".parse::<SourcePrefix>().is_err());
    }
}
