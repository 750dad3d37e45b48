//! Sending raw Ethernet frames out of an interface inside a namespace (`AF_PACKET`, `SOCK_RAW`).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::netns::Netns;

/// Upper bound on frames in one [`FrameSender::send_paced`] call.
pub const MAX_FRAMES_PER_CALL: usize = 100_000;
/// How long one [`FrameSender::send_paced`] call may take before the test fails, in seconds.
pub const SEND_DEADLINE: Duration = Duration::from_mins(1);
/// How many times one frame is retried when the socket reports `ENOBUFS` (queue full).
const ENOBUFS_RETRIES: u32 = 100;

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
        let name = ns.name().to_owned();
        let fd = ns.run_in(|| open_bound(ifname)).unwrap_or_else(|e| {
            panic!("cannot open an AF_PACKET socket on {ifname} in {name}: {e}")
        });
        FrameSender {
            fd,
            ifname: ifname.to_owned(),
            sent: 0,
        }
    }

    /// Opens a raw packet socket on `ifname` inside the namespace named `ns_name`
    /// (`/run/netns/<ns_name>`), one this crate did not make (xtask's vm-test makes its own).
    ///
    /// # Errors
    /// When the namespace cannot be entered, the interface does not exist or the socket cannot
    /// be created.
    pub fn open_named(ns_name: &str, ifname: &str) -> io::Result<FrameSender> {
        let path = format!("/run/netns/{ns_name}");
        let fd = std::thread::scope(|s| {
            s.spawn(|| {
                let file = std::fs::File::open(&path)?;
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)?;
                open_bound(ifname)
            })
            .join()
            .unwrap_or_else(|payload| std::panic::resume_unwind(payload))
        })?;
        Ok(FrameSender {
            fd,
            ifname: ifname.to_owned(),
            sent: 0,
        })
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

fn open_bound(ifname: &str) -> io::Result<OwnedFd> {
    let cname = CString::new(ifname).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: `cname` is a valid NUL-terminated string.
    let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    if ifindex == 0 {
        return Err(io::Error::last_os_error());
    }
    // Protocol 0: this socket sends only, it is never handed received frames.
    // SAFETY: plain syscall with constant arguments.
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: all-zero is a valid `sockaddr_ll`.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = u16::try_from(libc::AF_PACKET).expect("AF_PACKET fits in u16");
    addr.sll_ifindex =
        i32::try_from(ifindex).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let len = u32::try_from(std::mem::size_of::<libc::sockaddr_ll>()).expect("small struct");
    // SAFETY: `addr` is a valid `sockaddr_ll` and `len` is its size.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const addr).cast::<libc::sockaddr>(),
            len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}
