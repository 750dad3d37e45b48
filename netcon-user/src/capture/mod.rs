//! Frame capture: backends yield [`Captured`] frames and do not parse them.

pub mod promisc;
pub mod xdp;

use bytes::Bytes;
use chrono::{DateTime, Utc};

/// One frame as it came off an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Captured {
    /// When the frame was captured (wall clock, UTC).
    pub ts: DateTime<Utc>,
    /// Interface index it arrived on.
    pub ifindex: u32,
    /// Length of the frame on the wire; more than `bytes.len()` when the capture cut it.
    pub wire_len: u32,
    /// The frame, from the Ethernet header on.
    pub bytes: Bytes,
}

/// Loss and volume counters of a capture backend, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CaptureCounters {
    /// Frames the capture looked at.
    pub seen: u64,
    /// Frames that matched the configured ports.
    pub matched: u64,
    /// Matched frames lost because the ring buffer to userspace was full.
    pub ringbuf_full: u64,
    /// Matched frames longer than the capture length, delivered cut.
    pub truncated: u64,
    /// Matched frames that could not be copied.
    pub copy_failed: u64,
}

impl std::fmt::Display for CaptureCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seen={} matched={} ringbuf_full={} truncated={} copy_failed={}",
            self.seen, self.matched, self.ringbuf_full, self.truncated, self.copy_failed
        )
    }
}
