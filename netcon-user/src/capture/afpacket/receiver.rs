//! One interface's receive thread: reads frames through pnet as fast as they come and puts
//! each in its source's queue of the shared [`FairQueue`], never waiting for the pipeline.

use std::{
    io,
    net::IpAddr,
    os::fd::RawFd,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::Instant,
};

use chrono::Utc;
use etherparse::{LaxNetSlice, LaxSlicedPacket};
use pnet_datalink::DataLinkReceiver;
use tokio::sync::Notify;

use super::{
    MAX_FRAME, RawError, STOP_GRACE, WAKE_INTERVAL,
    fair::FairQueue,
    socket::{
        CONTROL_LEN, HEAD_LEN, Meta, discard, peek, restore_vlan_tag, socket_error, wait_readable,
    },
};
use crate::{
    capture::{Captured, Interface, LinkType},
    notice::SourcePrefix,
};

/// Bytes charged for a queued frame beyond its own: the `Captured` and the allocation's
/// bookkeeping. 96.
pub(super) const FRAME_OVERHEAD: usize = 96;

/// Whose queue a frame goes to: the interface and the source (an IPv4 address or an IPv6 /64;
/// `None` for a frame that is not IP, which the filter keeps out: all of those share one queue).
///
/// The address and not address and port: a port costs a sender nothing to vary, and neither
/// do the low 64 bits of an IPv6 address. A sender that forges many IPv4 source addresses gets
/// a queue for each, up to the queue's bound on sources; then new sources are refused until
/// queues empty (counted, unnamed beyond [`super::fair::NAMED_DROPS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct SourceKey {
    pub ifindex: u32,
    pub source: Option<SourcePrefix>,
}

/// What the receive threads and the pipeline share.
pub(super) struct Shared {
    pub queue: Mutex<FairQueue<SourceKey, Captured>>,
    /// Wakes the pipeline when the queue stops being empty, or a thread ends.
    pub wake: Notify,
    /// The first error a thread ended with.
    pub failed: Mutex<Option<RawError>>,
    /// Receive threads still running.
    pub live: AtomicUsize,
    pub stop: AtomicBool,
}

impl Shared {
    pub fn queue(&self) -> MutexGuard<'_, FairQueue<SourceKey, Captured>> {
        // A thread that panicked holding the lock left the queue consistent: every change to
        // it completes before anything that could panic.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn take_failed(&self) -> Option<RawError> {
        self.failed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

/// Counters a receive thread keeps and the pipeline reads.
#[derive(Debug, Default)]
pub(super) struct LinkCounters {
    pub received: AtomicU64,
    pub truncated: AtomicU64,
}

/// One interface's receive thread.
pub(super) struct Receiver {
    pub interface: Interface,
    pub fd: RawFd,
    pub pnet: Box<dyn DataLinkReceiver>,
    pub counters: Arc<LinkCounters>,
    pub shared: Arc<Shared>,
}

impl Receiver {
    pub fn run(mut self) {
        if let Err(error) = self.receive() {
            tracing::debug!(interface = %self.interface.name, %error, "raw receive thread failed");
            self.shared
                .failed
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get_or_insert(error);
        }
        self.shared.live.fetch_sub(1, Ordering::AcqRel);
        self.shared.wake.notify_one();
    }

    /// Reads frames until shutdown: a peek for what pnet does not deliver and for who sent the
    /// frame, then pnet's read; or, when that sender's queue is full, a discard that costs one
    /// system call and no copy, so a flood is shed as cheaply as the socket allows.
    fn receive(&mut self) -> Result<(), RawError> {
        let mut control = [0u64; CONTROL_LEN / 8];
        let mut head = [0u8; HEAD_LEN];
        let mut stop_by = None;
        loop {
            if self.shared.stop.load(Ordering::Relaxed) {
                let by = *stop_by.get_or_insert_with(|| Instant::now() + STOP_GRACE);
                if Instant::now() >= by {
                    return Ok(());
                }
            }
            let meta = match peek(self.fd, &mut control, &mut head) {
                Ok(meta) => meta,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if stop_by.is_some() {
                        return Ok(());
                    }
                    wait_readable(self.fd, WAKE_INTERVAL)
                        .map_err(|source| socket_error("poll", &self.interface, source))?;
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(socket_error("recvmsg(MSG_PEEK)", &self.interface, source));
                }
            };
            if meta.outgoing {
                // Kernels before 4.20 (no PACKET_IGNORE_OUTGOING): this host's own frame.
                self.discard()?;
                continue;
            }
            let source = SourceKey {
                ifindex: self.interface.ifindex,
                source: source_address(&head[..meta.len.min(HEAD_LEN)]).map(SourcePrefix::of),
            };
            let tag = if meta.vlan.is_some() && meta.len >= 12 {
                4
            } else {
                0
            };
            let cost = meta.len.min(MAX_FRAME) + tag + FRAME_OVERHEAD;
            if self.shared.queue().source_full(source, cost) {
                self.shared.queue().count_drop(source);
                self.counters.received.fetch_add(1, Ordering::Relaxed);
                self.discard()?;
                continue;
            }
            let frame = loop {
                match self.pnet.next() {
                    Ok(frame) => break Some(frame),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    // Not possible after the peek: start over with the next frame.
                    Err(e) if e.kind() == io::ErrorKind::TimedOut => break None,
                    Err(source) => {
                        return Err(socket_error(
                            "recvfrom (pnet datalink)",
                            &self.interface,
                            source,
                        ));
                    }
                }
            };
            let Some(frame) = frame else { continue };
            self.counters.received.fetch_add(1, Ordering::Relaxed);
            if frame.len() < meta.len {
                self.counters.truncated.fetch_add(1, Ordering::Relaxed);
            }
            hand_over(&self.shared, source, cost, frame, &meta);
        }
    }

    /// Takes the peeked frame off the socket unread.
    fn discard(&self) -> Result<(), RawError> {
        match discard(self.fd) {
            // Interrupted: the frame is still there, and the next peek sees it again.
            Err(e) if e.kind() != io::ErrorKind::Interrupted => {
                Err(socket_error("recv(MSG_TRUNC)", &self.interface, e))
            }
            _ => Ok(()),
        }
    }
}

/// Puts `frame` in `source`'s queue, charged `cost` bytes, or counts it dropped there; wakes
/// the pipeline if the queue was empty. Never waits for room.
fn hand_over(shared: &Shared, source: SourceKey, cost: usize, frame: &[u8], meta: &Meta) {
    let mut queue = shared.queue();
    let was_empty = queue.is_empty();
    // A refusal is counted by the queue, under the source's name: the pipeline reports it.
    let _ = queue.push_with(source, cost, || {
        let (bytes, inserted) = restore_vlan_tag(frame, meta.vlan);
        Captured {
            ts: meta.ts.unwrap_or_else(Utc::now),
            ifindex: source.ifindex,
            wire_len: u32::try_from(meta.len + inserted).unwrap_or(u32::MAX),
            link: LinkType::Ethernet,
            bytes,
        }
    });
    drop(queue);
    if was_empty {
        shared.wake.notify_one();
    }
}

/// The IP source address of an Ethernet frame (VLAN tags still in it skipped), if it has one.
fn source_address(frame: &[u8]) -> Option<IpAddr> {
    match LaxSlicedPacket::from_ethernet(frame).ok()?.net? {
        LaxNetSlice::Ipv4(ip) => Some(ip.header().source_addr().into()),
        LaxNetSlice::Ipv6(ip) => Some(ip.header().source_addr().into()),
        LaxNetSlice::Arp(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_address_of_tagged_and_untagged_frames() {
        let frame =
            |tags: &[u16], builder: etherparse::PacketBuilderStep<etherparse::IpHeaders>| {
                let mut out = Vec::new();
                builder.udp(6665, 6666).write(&mut out, b"x").unwrap();
                for tpid in tags {
                    out.splice(12..12, [tpid.to_be_bytes(), [0, 5]].concat());
                }
                out
            };
        let v4 = || {
            etherparse::PacketBuilder::ethernet2([2; 6], [0xff; 6]).ipv4(
                [10, 1, 0, 5],
                [10, 1, 0, 1],
                64,
            )
        };
        assert_eq!(
            source_address(&frame(&[], v4())),
            Some([10, 1, 0, 5].into())
        );
        assert_eq!(
            source_address(&frame(&[0x8100], v4())),
            Some([10, 1, 0, 5].into())
        );
        let v6 =
            etherparse::PacketBuilder::ethernet2([2; 6], [0xff; 6]).ipv6([0xfd; 16], [1; 16], 64);
        assert_eq!(source_address(&frame(&[], v6)), Some([0xfd; 16].into()));
        assert_eq!(source_address(&[0u8; 10]), None);
        assert_eq!(source_address(&[0u8; 60]), None);
    }
}
