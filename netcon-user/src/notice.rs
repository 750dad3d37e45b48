//! What netcon-sniff itself has to say in the output stream, beside the senders' records.
//!
//! A loss the reader of a log cannot see is worse than the loss: someone reading one machine's
//! file must be able to tell that a gap may be there. So frames lost before decoding and panic
//! hooks that were skipped, delayed or killed, and messages a forwarder dropped are [`Notice`]s, written to stdout (text and JSON)
//! and handed to every sink (files, syslog), not only counted on the stats line.

use std::{
    net::{IpAddr, SocketAddr},
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
    /// known source address (reason `queue_full` of the raw backend); every other loss is
    /// `None` (the frames were lost unread).
    pub sender: Option<IpAddr>,
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
