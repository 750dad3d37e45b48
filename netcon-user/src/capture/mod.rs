//! Frame capture: backends yield [`Captured`] frames and do not parse them.
//!
//! - [`xdp`]: the XDP program and its ring buffer (the fast path);
//! - [`afpacket`]: the raw backend (`--backend raw`), pnet over `AF_PACKET` sockets with a kernel filter (where XDP cannot load);
//! - [`pcap`]: a capture file, offline.

pub mod afpacket;
pub mod ifstats;
pub mod pcap;
pub mod promisc;
pub mod xdp;

use std::{fmt, io, os::fd::RawFd};

use bytes::Bytes;
use chrono::{DateTime, Utc};

use crate::notice::LossReason;
// What a frame starts with is a wire fact; kept nameable here for the backends that tag frames.
pub use crate::wire::LinkType;

/// Most frames a backend hands over at once before yielding to the rest of the pipeline, so a
/// flood cannot starve output and signals. Unit: frames.
pub const MAX_BATCH: usize = 1024;

/// `setsockopt(2)` with a typed value.
pub(crate) fn setsockopt<T>(fd: RawFd, level: i32, name: i32, value: &T) -> io::Result<()> {
    // SAFETY: value points to a T and its size is passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            std::ptr::from_ref(value).cast(),
            libc::socklen_t::try_from(size_of::<T>()).unwrap_or(0),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A network interface by name and index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    /// Its name, e.g. `eth1`.
    pub name: String,
    /// Its index (`if_nametoindex`).
    pub ifindex: u32,
}

/// How a frame's interface is named in output (`--format raw`, the `interface` label).
///
/// One of ours by its name; otherwise, live, by its index. A file has no interface names: its
/// frames are `file` (or `file:N` for the Nth interface of a pcapng file).
#[derive(Debug, Clone, Default)]
pub struct InterfaceLabels {
    interfaces: Vec<Interface>,
    from_file: bool,
}

impl InterfaceLabels {
    /// Labels for frames captured on `interfaces`, or read from a file.
    #[must_use]
    pub fn new(interfaces: &[Interface], from_file: bool) -> Self {
        Self {
            interfaces: interfaces.to_vec(),
            from_file,
        }
    }

    /// The label of `ifindex`.
    #[must_use]
    pub fn label(&self, ifindex: u32) -> std::borrow::Cow<'_, str> {
        match self.interfaces.iter().find(|i| i.ifindex == ifindex) {
            Some(interface) => interface.name.as_str().into(),
            None if self.from_file && ifindex == 0 => "file".into(),
            None if self.from_file => format!("file:{ifindex}").into(),
            None => ifindex.to_string().into(),
        }
    }
}

/// One frame as it came off an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Captured {
    /// When the frame was captured (wall clock, UTC).
    pub ts: DateTime<Utc>,
    /// Interface index it arrived on (for a capture file: the file's interface number).
    pub ifindex: u32,
    /// Length of the frame on the wire; more than `bytes.len()` when the capture cut it.
    pub wire_len: u32,
    /// What the bytes start with.
    pub link: LinkType,
    /// The frame.
    pub bytes: Bytes,
}

/// Counters of the XDP program, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XdpCounters {
    /// Frames the program ran on.
    pub seen: u64,
    /// Frames that matched the configured ports.
    pub matched: u64,
    /// Matched frames lost because the ring buffer to userspace was full.
    pub ringbuf_full: u64,
    /// Matched frames longer than the capture length, delivered cut.
    pub truncated: u64,
    /// Matched frames that could not be copied.
    pub copy_failed: u64,
    /// Records after which the program woke the reader (it was parked, or had fallen behind).
    pub wakeups: u64,
    /// How full the ring buffer was when these were read; `None` where no ring was read
    /// (values made up of defaults).
    pub ring: Option<RingFill>,
}

/// How much of the XDP ring buffer holds records not yet read, at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RingFill {
    /// Bytes between the reader's position and the program's (records and their headers,
    /// reserved ones included), at most `size`.
    pub used: u64,
    /// The ring buffer's data size in bytes (`--ring-mib`).
    pub size: u64,
}

/// Counters of the raw backend's sockets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RawCounters {
    /// Frames read from the sockets (those then lost to a full queue included).
    pub received: u64,
    /// Frames the kernel queued for the sockets (`PACKET_STATISTICS` `tp_packets`).
    pub kernel_received: u64,
    /// Frames the kernel dropped because a socket buffer was full (`tp_drops`).
    pub kernel_dropped: u64,
    /// Frames longer than the read buffer, delivered cut.
    pub truncated: u64,
    /// Frames read but dropped by the queues from the receive threads to the pipeline: their
    /// source's queue (or all of them, or the memory budget) was full. Reported by sender.
    pub queue_full: u64,
}

impl RawCounters {
    fn add(&mut self, other: &Self) {
        self.received += other.received;
        self.kernel_received += other.kernel_received;
        self.kernel_dropped += other.kernel_dropped;
        self.truncated += other.truncated;
        self.queue_full += other.queue_full;
    }
}

/// Counters of a capture file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FileCounters {
    /// Frames read.
    pub read: u64,
    /// Frames of a link type netcon cannot decode.
    pub skipped: u64,
}

/// A backend's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaptureCounters {
    /// From the XDP program.
    Xdp(XdpCounters),
    /// From the packet sockets.
    Raw(RawCounters),
    /// From a capture file.
    File(FileCounters),
}

impl CaptureCounters {
    /// Matched frames the capture lost before netcon-sniff could read them.
    #[must_use]
    pub fn lost(&self) -> u64 {
        match self {
            Self::Xdp(c) => c.ringbuf_full + c.copy_failed,
            Self::Raw(c) => c.kernel_dropped + c.queue_full,
            Self::File(_) => 0,
        }
    }

    /// Every counter of frames lost before decoding, by reason, cumulative since capture
    /// started: the pipeline turns their growth into `capture_lost` notices. A backend with a
    /// new kind of loss adds its counter here, unless it reports those losses by sender
    /// ([`Backend::take_queue_losses`]).
    #[must_use]
    pub fn losses(&self) -> Vec<(LossReason, u64)> {
        match self {
            Self::Xdp(c) => vec![
                (LossReason::RingFull, c.ringbuf_full),
                (LossReason::CopyFailed, c.copy_failed),
            ],
            // The raw queues' drops (`queue_full`) are reported by sender instead
            // (`Backend::take_queue_losses`).
            Self::Raw(c) => vec![(LossReason::Socket, c.kernel_dropped)],
            Self::File(_) => Vec::new(),
        }
    }
}

impl fmt::Display for CaptureCounters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Xdp(c) => write!(
                f,
                "xdp counters: seen={} matched={} ringbuf_full={} truncated={} copy_failed={} \
                 wakeups={}",
                c.seen, c.matched, c.ringbuf_full, c.truncated, c.copy_failed, c.wakeups
            ),
            Self::Raw(c) => write!(
                f,
                "raw counters: received={} kernel_received={} kernel_dropped={} truncated={} \
                 queue_full={}",
                c.received, c.kernel_received, c.kernel_dropped, c.truncated, c.queue_full
            ),
            Self::File(c) => write!(f, "file counters: read={} skipped={}", c.read, c.skipped),
        }
    }
}

/// Why capture failed.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The XDP backend.
    #[error(transparent)]
    Xdp(#[from] xdp::XdpError),
    /// The raw backend.
    #[error(transparent)]
    Raw(#[from] afpacket::RawError),
    /// A capture file.
    #[error(transparent)]
    File(#[from] pcap::PcapFileError),
}

/// The capture backend in use.
pub enum Backend {
    /// XDP program and ring buffer.
    Xdp(Box<xdp::XdpCapture>),
    /// Packet sockets.
    Raw(afpacket::RawCapture),
    /// A capture file.
    File(pcap::PcapFileCapture),
}

impl Backend {
    /// Waits for frames and appends them; returns `false` when there will be no more (the end
    /// of a capture file).
    ///
    /// # Errors
    /// [`CaptureError`] when reading fails.
    pub async fn recv(&mut self, out: &mut Vec<Captured>) -> Result<bool, CaptureError> {
        match self {
            Self::Xdp(c) => c.recv(out).await.map(|()| true).map_err(Into::into),
            Self::Raw(c) => c.recv(out).await.map(|()| true).map_err(Into::into),
            Self::File(c) => c.read_batch(out).map_err(Into::into),
        }
    }

    /// Appends what is already captured, without waiting (at shutdown).
    ///
    /// # Errors
    /// [`CaptureError`] when reading fails.
    pub fn drain(&mut self, out: &mut Vec<Captured>) -> Result<(), CaptureError> {
        match self {
            Self::Xdp(c) => {
                c.drain(out);
                Ok(())
            }
            Self::Raw(c) => c.drain(out).map_err(Into::into),
            Self::File(_) => Ok(()),
        }
    }

    /// Frames the backend's queues dropped since the last call, by sender where known, as
    /// notices (the raw backend; the others lose frames only unread, counted in
    /// [`CaptureCounters::losses`]).
    pub fn take_queue_losses(&mut self) -> Vec<crate::notice::CaptureLost> {
        match self {
            Self::Raw(c) => c.take_queue_losses(),
            Self::Xdp(_) | Self::File(_) => Vec::new(),
        }
    }

    /// The backend's counters.
    ///
    /// # Errors
    /// [`CaptureError`] when they cannot be read.
    pub fn counters(&mut self) -> Result<CaptureCounters, CaptureError> {
        Ok(match self {
            Self::Xdp(c) => CaptureCounters::Xdp(c.counters()?),
            Self::Raw(c) => CaptureCounters::Raw(c.counters()),
            Self::File(c) => CaptureCounters::File(FileCounters {
                read: c.read,
                skipped: c.skipped,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_raw_loss_counter_is_a_reason() {
        let counters = CaptureCounters::Raw(RawCounters {
            kernel_dropped: 3,
            queue_full: 4,
            ..RawCounters::default()
        });
        // Queue drops are reported by sender, not from the counter; lost() has them all.
        assert_eq!(counters.losses(), vec![(LossReason::Socket, 3)]);
        assert_eq!(counters.lost(), 7);
    }
}
