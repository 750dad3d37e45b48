//! Sending raw Ethernet frames out of an interface inside a namespace (`AF_PACKET`, `SOCK_RAW`):
//! one frame at a time for tests, or batches of frames in one buffer by `sendmmsg` for a load
//! generator.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::netns::{Netns, NetnsError};

/// Upper bound on frames in one [`FrameSender::send_paced`] call.
pub const MAX_FRAMES_PER_CALL: usize = 100_000;
/// How long one [`FrameSender::send_paced`] call may take before the test fails, in seconds.
pub const SEND_DEADLINE: Duration = Duration::from_mins(1);
/// How many times one frame is retried when the socket reports `ENOBUFS` (queue full).
const ENOBUFS_RETRIES: u32 = 100;
/// How long [`FrameSender::send_batch`] may keep failing with `ENOBUFS` (the device queue or
/// veth ring is full) without any progress before it gives up: 5 s.
pub const STALL_LIMIT: Duration = Duration::from_secs(5);
/// Send buffer of a socket tuned by [`FrameSender::tune_for_load`], bytes: 8 MiB (veth with
/// XDP holds up to 256 frames in its ring, each charged to this socket until consumed).
const LOAD_SNDBUF: libc::c_int = 8 << 20;

/// Why a frame sender could not be opened or could not send.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The namespace could not be entered.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// A socket call failed.
    #[error("{call} on {interface}: {source}{}", hint(source))]
    Socket {
        /// Which call.
        call: &'static str,
        /// The interface.
        interface: String,
        /// The OS error.
        source: io::Error,
    },
    /// Sends kept being refused for a full queue.
    #[error("{interface} refused frames for {STALL_LIMIT:?} without progress: {source}")]
    Stalled {
        /// The interface.
        interface: String,
        /// The last refusal.
        source: io::Error,
    },
}

fn hint(error: &io::Error) -> &'static str {
    match error.raw_os_error() {
        Some(libc::EPERM | libc::EACCES) => " (needs root or CAP_NET_RAW)",
        Some(libc::ENODEV) => " (no such interface in this network namespace)",
        _ => "",
    }
}

/// What [`FrameSender::send_batch`] took.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchSent {
    /// `sendmmsg` calls.
    pub calls: u64,
    /// Calls refused for a full queue (`ENOBUFS`) and retried.
    pub retries: u64,
}

/// An `AF_PACKET` socket bound to one interface in one namespace. The socket was created inside the
/// namespace, so it sends there from whichever thread uses it.
#[derive(Debug)]
pub struct FrameSender {
    fd: OwnedFd,
    ifname: String,
    sent: usize,
}

impl FrameSender {
    /// Opens a raw packet socket on `ifname` inside `ns`. It receives nothing (protocol 0).
    ///
    /// # Panics
    /// If the interface does not exist or the socket cannot be created.
    #[must_use]
    pub fn open(ns: &Netns, ifname: &str) -> FrameSender {
        FrameSender::try_open(ns, ifname)
            .unwrap_or_else(|e| panic!("cannot open an AF_PACKET socket in {}: {e}", ns.name()))
    }

    /// As [`FrameSender::open`], with an error instead of a panic.
    ///
    /// # Errors
    /// When the namespace cannot be entered, the interface does not exist or the socket cannot
    /// be created.
    pub fn try_open(ns: &Netns, ifname: &str) -> Result<FrameSender, SendError> {
        ns.try_run_in(|| FrameSender::open_here(ifname))?
    }

    /// Opens a raw packet socket on `ifname` in this thread's network namespace.
    ///
    /// # Errors
    /// When the interface does not exist or the socket cannot be created.
    pub fn open_here(ifname: &str) -> Result<FrameSender, SendError> {
        let fail = |call: &'static str, source: io::Error| SendError::Socket {
            call,
            interface: ifname.to_owned(),
            source,
        };
        let cname = CString::new(ifname).map_err(|e| {
            fail(
                "if_nametoindex",
                io::Error::new(io::ErrorKind::InvalidInput, e),
            )
        })?;
        // SAFETY: `cname` is a valid NUL-terminated string.
        let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        if ifindex == 0 {
            return Err(fail("if_nametoindex", io::Error::last_os_error()));
        }
        // Protocol 0: this socket sends only, it is never handed received frames.
        // SAFETY: plain syscall with constant arguments.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(fail("socket(AF_PACKET)", io::Error::last_os_error()));
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: all-zero is a valid `sockaddr_ll`.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        // The casts cannot fail: AF_PACKET is 17, an ifindex is a kernel `int`, the struct small.
        addr.sll_family = u16::try_from(libc::AF_PACKET).unwrap_or_default();
        addr.sll_ifindex = i32::try_from(ifindex).unwrap_or_default();
        let len = libc::socklen_t::try_from(size_of::<libc::sockaddr_ll>()).unwrap_or_default();
        // SAFETY: `addr` is a valid `sockaddr_ll` and `len` is its size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const addr).cast::<libc::sockaddr>(),
                len,
            )
        };
        if rc < 0 {
            return Err(fail("bind", io::Error::last_os_error()));
        }
        Ok(FrameSender {
            fd,
            ifname: ifname.to_owned(),
            sent: 0,
        })
    }

    /// Sets the socket up for a load generator: frames go straight to the driver
    /// (`PACKET_QDISC_BYPASS`: veth has no queue to skip, but this also skips the qdisc lookup,
    /// and a real NIC's qdisc would only add its own drops) and the send buffer is 8 MiB
    /// (`SO_SNDBUFFORCE`, or as much of it as `SO_SNDBUF` allows without `CAP_NET_ADMIN`).
    ///
    /// # Errors
    /// When the kernel refuses the bypass.
    pub fn tune_for_load(&self) -> Result<(), SendError> {
        let one: libc::c_int = 1;
        self.setsockopt(libc::SOL_PACKET, libc::PACKET_QDISC_BYPASS, &one)
            .map_err(|source| SendError::Socket {
                call: "setsockopt(PACKET_QDISC_BYPASS)",
                interface: self.ifname.clone(),
                source,
            })?;
        if self
            .setsockopt(libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, &LOAD_SNDBUF)
            .is_err()
        {
            let _ = self.setsockopt(libc::SOL_SOCKET, libc::SO_SNDBUF, &LOAD_SNDBUF);
        }
        Ok(())
    }

    fn setsockopt<T>(&self, level: i32, name: i32, value: &T) -> io::Result<()> {
        // SAFETY: `value` points to a T and its size is passed.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                level,
                name,
                std::ptr::from_ref(value).cast(),
                libc::socklen_t::try_from(size_of::<T>()).unwrap_or_default(),
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Sends every frame of `frames` (each `(offset, len)` into `buffer`) with as few
    /// `sendmmsg` calls as the kernel allows, retrying (after yielding the CPU to whoever
    /// drains the queue) the ones it refuses for a full queue.
    ///
    /// # Errors
    /// [`SendError::Socket`] on any error but a full queue, [`SendError::Stalled`] after
    /// [`STALL_LIMIT`] without progress.
    ///
    /// # Panics
    /// If a frame lies outside `buffer`.
    pub fn send_batch(
        &mut self,
        buffer: &[u8],
        frames: &[(usize, usize)],
        scratch: &mut SendScratch,
    ) -> Result<BatchSent, SendError> {
        scratch.iov.clear();
        for &(off, len) in frames {
            scratch.iov.push(libc::iovec {
                iov_base: buffer[off..off + len].as_ptr().cast_mut().cast(),
                iov_len: len,
            });
        }
        scratch.msgs.clear();
        for iov in &mut scratch.iov {
            // SAFETY: all-zero is a valid mmsghdr; the iovec pointer is set below.
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_iov = std::ptr::from_mut(iov);
            m.msg_hdr.msg_iovlen = 1;
            scratch.msgs.push(m);
        }
        let mut took = BatchSent::default();
        let mut done = 0;
        let mut stalled_since: Option<Instant> = None;
        while done < scratch.msgs.len() {
            let left = &mut scratch.msgs[done..];
            // SAFETY: every message points at an iovec into `buffer`, alive for the call.
            let n = unsafe {
                libc::sendmmsg(
                    self.fd.as_raw_fd(),
                    left.as_mut_ptr(),
                    u32::try_from(left.len()).unwrap_or(u32::MAX),
                    0,
                )
            };
            took.calls += 1;
            if n > 0 {
                let n = usize::try_from(n).unwrap_or(0);
                done += n;
                self.sent += n;
                stalled_since = None;
                continue;
            }
            let error = io::Error::last_os_error();
            match error.raw_os_error() {
                Some(libc::ENOBUFS | libc::EAGAIN) => {
                    took.retries += 1;
                    let since = *stalled_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > STALL_LIMIT {
                        return Err(SendError::Stalled {
                            interface: self.ifname.clone(),
                            source: error,
                        });
                    }
                    // Let the receiving side (softirq, the receiver) drain the queue.
                    std::thread::yield_now();
                }
                Some(libc::EINTR) => {}
                _ => {
                    return Err(SendError::Socket {
                        call: "sendmmsg",
                        interface: self.ifname.clone(),
                        source: error,
                    });
                }
            }
        }
        Ok(took)
    }

    /// Sends one frame.
    ///
    /// # Panics
    /// If the kernel refuses it.
    pub fn send(&mut self, frame: &[u8]) {
        if let Err(err) = self.try_send(frame) {
            panic!(
                "send of a {}-byte frame on {} failed: {err}",
                frame.len(),
                self.ifname
            );
        }
    }

    /// Sends one frame, retrying a while when the interface's queue is full (`ENOBUFS`).
    ///
    /// # Errors
    /// When the kernel refuses it, or sends only part of it.
    pub fn try_send(&mut self, frame: &[u8]) -> io::Result<()> {
        let mut retries = 0;
        loop {
            // SAFETY: `frame` is a valid slice for the duration of the call; the fd is open.
            let n =
                unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
            if n >= 0 {
                if usize::try_from(n).ok() != Some(frame.len()) {
                    return Err(io::Error::other(format!("short send on {}", self.ifname)));
                }
                self.sent += 1;
                return Ok(());
            }
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::ENOBUFS) && retries < ENOBUFS_RETRIES {
                retries += 1;
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            return Err(err);
        }
    }

    /// Sends each frame of `frames` in order, frame `i` no earlier than `i * interval` after the
    /// start (no drift from sleep overshoot). Bounded: at most [`MAX_FRAMES_PER_CALL`] frames and
    /// [`SEND_DEADLINE`] of wall time, else the test fails.
    ///
    /// # Panics
    /// On a send error, too many frames, or the deadline.
    pub fn send_paced<F: AsRef<[u8]>>(&mut self, frames: &[F], interval: Duration) {
        assert!(
            frames.len() <= MAX_FRAMES_PER_CALL,
            "{} frames in one call (limit {MAX_FRAMES_PER_CALL})",
            frames.len()
        );
        let start = Instant::now();
        let mut due = start;
        for frame in frames {
            let now = Instant::now();
            assert!(
                now.duration_since(start) < SEND_DEADLINE,
                "sending {} frames took over {SEND_DEADLINE:?}",
                frames.len()
            );
            if due > now {
                std::thread::sleep(due - now);
            }
            self.send(frame.as_ref());
            due += interval;
        }
    }

    /// Sends every frame back to back (still bounded as [`FrameSender::send_paced`]).
    ///
    /// # Panics
    /// As [`FrameSender::send_paced`].
    pub fn send_all<F: AsRef<[u8]>>(&mut self, frames: &[F]) {
        self.send_paced(frames, Duration::ZERO);
    }

    /// Frames sent so far through this socket.
    #[must_use]
    pub fn sent(&self) -> usize {
        self.sent
    }
}

/// [`FrameSender::send_batch`]'s `iovec` and `mmsghdr` arrays, kept between calls so that a
/// load generator's loop does not allocate. Separate from the sender because the raw pointers
/// they hold would make it neither `Send` nor `Sync`.
#[derive(Default)]
pub struct SendScratch {
    iov: Vec<libc::iovec>,
    msgs: Vec<libc::mmsghdr>,
}

impl std::fmt::Debug for SendScratch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The raw iovec and mmsghdr arrays only hold pointers into the last batch.
        f.debug_struct("SendScratch")
            .field("iov", &self.iov.len())
            .field("msgs", &self.msgs.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::net::{SocketAddr, UdpSocket};

    use super::*;
    use crate::frame::{NETCONSOLE_DST_PORT, Vlan, write_udp};
    use crate::netns::Topology;

    /// A batch of frames in one buffer, sent by `sendmmsg` on a socket tuned for load, reaches
    /// a UDP socket in the collector's namespace whole and in order.
    #[test]
    fn batch_reaches_the_collector_in_order() {
        // The test kit's own tests keep to subnet 50.
        let topo = Topology::on_subnet(50);
        let link = topo.link().clone();
        let collector: SocketAddr = (link.collector_v4, NETCONSOLE_DST_PORT).into();
        let socket = topo
            .collector
            .run_in(|| UdpSocket::bind(collector).unwrap());
        socket
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut sender = topo.sender(&link);
        sender.tune_for_load().unwrap();

        let mut buffer = Vec::new();
        let mut frames = Vec::new();
        for i in 0..5u8 {
            let start = buffer.len();
            let src = SocketAddr::new(link.sender_v4.into(), 6665);
            let payload = vec![b'a' + i; 10 + usize::from(i)];
            let macs = (link.sender_mac, link.collector_mac);
            write_udp(&mut buffer, macs, Vlan::None, src, collector, &payload);
            frames.push((start, buffer.len() - start));
        }
        let took = sender
            .send_batch(&buffer, &frames, &mut SendScratch::default())
            .unwrap();
        assert!(took.calls >= 1, "{took:?}");
        assert_eq!(sender.sent(), 5);

        let mut got = Vec::new();
        let mut datagram = [0u8; 64];
        for _ in 0..5 {
            let n = socket
                .recv(&mut datagram)
                .expect("all five datagrams arrive");
            got.push(datagram[..n].to_vec());
        }
        let want: Vec<Vec<u8>> = (0..5u8)
            .map(|i| vec![b'a' + i; 10 + usize::from(i)])
            .collect();
        assert_eq!(got, want);
    }
}
