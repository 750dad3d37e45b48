//! The raw backend: pnet's datalink channel over a filtered `AF_PACKET` socket, one per
//! interface, for kernels or privileges where the XDP program cannot load.
//!
//! netcon opens each socket and sets up what pnet does not: the classic BPF filter (attached
//! while the socket is still unbound, so no unfiltered frame is ever queued), the receive buffer,
//! `PACKET_AUXDATA`, `SO_TIMESTAMPNS` and `PACKET_IGNORE_OUTGOING`. pnet (`pnet_datalink` 0.35)
//! takes the descriptor (`Config::socket_fd`), binds it to the interface and reads the frames.
//!
//! pnet 0.35 reads a frame with `recvfrom` and so never sees the control messages that carry
//! the VLAN tag the kernel took out of the frame (`PACKET_AUXDATA`) and the kernel's receive time
//! (`SCM_TIMESTAMPNS`). netcon therefore peeks at each frame on the same socket just before pnet
//! reads it (`recvmsg` with `MSG_PEEK`, no data copied): one thread reads each socket, so the
//! frame peeked is the frame pnet reads next.
//!
//! pnet's receiver blocks (`poll`, then `recvfrom`) for every frame, so each interface has a
//! receive thread of its own. The threads feed one bounded channel that the pipeline empties
//! in batches. When it is full a thread waits for room instead of dropping the frame: frames
//! then wait in the socket buffer, which is much larger, and the kernel counts what overflows
//! it. A frame read but never handed over (the pipeline gone) is counted too (`queue_full`).

pub mod filter;

use std::{
    io,
    mem::{size_of, zeroed},
    os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use bytes::{Bytes, BytesMut};
use chrono::{DateTime, Utc};
use pnet_datalink::{Channel, DataLinkReceiver, DataLinkSender, NetworkInterface};
use tokio::sync::mpsc;

use super::{Captured, LinkType, RawCounters, setsockopt};
use crate::capture::Interface;

/// Longest frame read whole, bytes. Netconsole frames are under 1100 bytes
/// (`MAX_PRINT_CHUNK` = 1000 payload bytes plus headers); longer ones are cut and counted.
pub const MAX_FRAME: usize = 2048;

/// Frames the channel from the receive threads to the pipeline holds. Default 4096 (about
/// 1.2 MB of 200-byte records); beyond it frames wait in the socket buffer.
pub const QUEUE_FRAMES: usize = 4096;

/// Most frames the pipeline takes from the channel at once. Default 1024, as the XDP backend.
pub const BATCH: usize = 1024;

/// How long an idle receive thread waits for a frame before it looks for shutdown again.
/// Default 100 ms: Ctrl-C stays prompt, an idle thread wakes 10 times a second.
const WAKE_INTERVAL: Duration = Duration::from_millis(100);

/// How long a receive thread goes on reading frames already queued once shutdown is asked.
/// Default 300 ms: enough to empty a full socket buffer, bounded under a flood.
const STOP_GRACE: Duration = Duration::from_millis(300);

/// Longest wait at shutdown for the receive threads to hand over their last frames. Default
/// 900 ms: the grace and a wake interval, with room to spare, under Ctrl-C's one second.
const DRAIN_LIMIT: Duration = Duration::from_millis(900);

/// Bytes a receive thread allocates at a time for the frames it hands over. Default 64 KiB:
/// frames share allocations instead of taking one each.
const ARENA_BYTES: usize = 64 * 1024;

/// Control message space for one peek: `tpacket_auxdata` and a `timespec`, with headers.
const CONTROL_LEN: usize = 128;

/// Why the raw backend could not start or read.
#[derive(Debug, thiserror::Error)]
pub enum RawError {
    /// A socket call failed.
    #[error("{call} on {interface}{}: {source}", hint(source))]
    Socket {
        call: &'static str,
        interface: String,
        #[source]
        source: io::Error,
    },
    /// A receive thread could not be started.
    #[error("cannot start the receive thread for {interface}: {source}")]
    Thread {
        interface: String,
        #[source]
        source: io::Error,
    },
    /// Every receive thread has ended without saying why.
    #[error("the raw sockets' receive threads have ended (this is a bug in netcon-sniff)")]
    ReceiversEnded,
}

fn hint(error: &io::Error) -> &'static str {
    match error.raw_os_error() {
        Some(libc::EPERM | libc::EACCES) => " (needs root or CAP_NET_RAW)",
        Some(libc::ENETDOWN | libc::ENXIO | libc::ENODEV) => {
            " (the interface went down or away; restart netcon-sniff once it is back)"
        }
        _ => "",
    }
}

/// What a receive thread hands the pipeline.
type Message = Result<Captured, RawError>;

/// Counters a receive thread keeps and the pipeline reads.
#[derive(Debug, Default)]
struct LinkCounters {
    received: AtomicU64,
    truncated: AtomicU64,
    queue_full: AtomicU64,
}

/// One interface's socket, as the pipeline side holds it.
struct Link {
    /// pnet's sending half, never used to send: it shares the descriptor with the receiving
    /// half and keeps it open, so `PACKET_STATISTICS` can be read after the thread ended.
    _pin: Box<dyn DataLinkSender>,
    fd: RawFd,
    counters: Arc<LinkCounters>,
    /// `PACKET_STATISTICS` resets on read: its sums so far.
    kernel_received: u64,
    kernel_dropped: u64,
    thread: Option<JoinHandle<()>>,
}

/// Packet sockets on each configured interface, read through pnet by one thread each.
pub struct RawCapture {
    links: Vec<Link>,
    frames: mpsc::Receiver<Message>,
    inbox: Vec<Message>,
    /// An error that came in behind frames: reported by the next `recv`.
    failed: Option<RawError>,
    stop: Arc<AtomicBool>,
}

impl RawCapture {
    /// Opens, filters and binds a packet socket on each interface and starts its receive thread.
    ///
    /// # Errors
    /// [`RawError`] when a socket call is refused or a thread cannot start.
    pub fn open(
        interfaces: &[Interface],
        ports: &[u16],
        rcvbuf_bytes: u32,
    ) -> Result<Self, RawError> {
        Self::open_with_queue(interfaces, ports, rcvbuf_bytes, QUEUE_FRAMES)
    }

    fn open_with_queue(
        interfaces: &[Interface],
        ports: &[u16],
        rcvbuf_bytes: u32,
        queue_frames: usize,
    ) -> Result<Self, RawError> {
        let program = filter::program(ports);
        let (sender, frames) = mpsc::channel(queue_frames);
        let mut capture = Self {
            links: Vec::with_capacity(interfaces.len()),
            frames,
            inbox: Vec::with_capacity(BATCH),
            failed: None,
            stop: Arc::new(AtomicBool::new(false)),
        };
        // On an error below, dropping `capture` stops the threads already started.
        for interface in interfaces {
            let socket = prepare_socket(interface, &program, rcvbuf_bytes)?;
            let fd = socket.as_raw_fd();
            let (pin, pnet) = pnet_channel(interface, socket)?;
            let counters = Arc::new(LinkCounters::default());
            let receiver = Receiver {
                interface: interface.clone(),
                fd,
                pnet,
                counters: Arc::clone(&counters),
                stop: Arc::clone(&capture.stop),
                out: sender.clone(),
            };
            let thread = std::thread::Builder::new()
                .name(format!("raw {}", interface.name))
                .spawn(move || receiver.run())
                .map_err(|source| RawError::Thread {
                    interface: interface.name.clone(),
                    source,
                })?;
            capture.links.push(Link {
                _pin: pin,
                fd,
                counters,
                kernel_received: 0,
                kernel_dropped: 0,
                thread: Some(thread),
            });
        }
        Ok(capture)
    }

    /// Waits until frames arrive, then appends up to [`BATCH`] of them. Cancel safe.
    ///
    /// # Errors
    /// [`RawError`] when a socket cannot be read.
    pub async fn recv(&mut self, out: &mut Vec<Captured>) -> Result<(), RawError> {
        if let Some(error) = self.failed.take() {
            return Err(error);
        }
        if self.frames.recv_many(&mut self.inbox, BATCH).await == 0 {
            return Err(RawError::ReceiversEnded);
        }
        self.unpack(out);
        match self.failed.take() {
            Some(error) if out.is_empty() => Err(error),
            failed => {
                self.failed = failed;
                Ok(())
            }
        }
    }

    /// Stops the receive threads and appends every frame they read, those they read from the
    /// sockets' queues on the way out included (at shutdown; returns within [`DRAIN_LIMIT`]).
    ///
    /// # Errors
    /// [`RawError`] when a socket could not be read.
    pub fn drain(&mut self, out: &mut Vec<Captured>) -> Result<(), RawError> {
        self.stop.store(true, Ordering::Relaxed);
        let deadline = Instant::now() + DRAIN_LIMIT;
        loop {
            match self.frames.try_recv() {
                Ok(message) => {
                    self.inbox.push(message);
                    self.unpack(out);
                }
                // Every thread has ended and everything it sent is taken.
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(mpsc::error::TryRecvError::Empty) => {
                    tracing::warn!("raw receive threads still busy at shutdown; not waiting");
                    break;
                }
            }
        }
        for link in &mut self.links {
            if let Some(thread) = link.thread.take_if(|t| t.is_finished()) {
                let _ = thread.join();
            }
        }
        self.failed.take().map_or(Ok(()), Err)
    }

    /// Counters of all sockets, with the kernel's counts.
    #[must_use]
    pub fn counters(&mut self) -> RawCounters {
        let mut total = RawCounters::default();
        for link in &mut self.links {
            let (packets, drops) = statistics(link.fd);
            link.kernel_received += packets;
            link.kernel_dropped += drops;
            total.add(&RawCounters {
                received: link.counters.received.load(Ordering::Relaxed),
                kernel_received: link.kernel_received,
                kernel_dropped: link.kernel_dropped,
                truncated: link.counters.truncated.load(Ordering::Relaxed),
                queue_full: link.counters.queue_full.load(Ordering::Relaxed),
            });
        }
        total
    }

    /// Moves the frames of `inbox` to `out`; keeps the first error for later.
    fn unpack(&mut self, out: &mut Vec<Captured>) {
        for message in self.inbox.drain(..) {
            match message {
                Ok(frame) => out.push(frame),
                Err(error) => {
                    self.failed.get_or_insert(error);
                }
            }
        }
    }
}

impl Drop for RawCapture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // A thread waiting for room to report an error gives up instead.
        self.frames.close();
        for link in &mut self.links {
            if let Some(thread) = link.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

fn socket_error(call: &'static str, interface: &Interface, source: io::Error) -> RawError {
    RawError::Socket {
        call,
        interface: interface.name.clone(),
        source,
    }
}

/// Opens an unbound packet socket with netcon's options and filter.
fn prepare_socket(
    interface: &Interface,
    program: &[libc::sock_filter],
    rcvbuf_bytes: u32,
) -> Result<OwnedFd, RawError> {
    // Protocol 0: the socket receives nothing until pnet binds it to the interface for
    // ETH_P_ALL, and by then the filter is on (net/packet/af_packet.c, packet_create).
    // SAFETY: plain socket(2); checked below.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(socket_error(
            "socket(AF_PACKET)",
            interface,
            io::Error::last_os_error(),
        ));
    }
    // SAFETY: a fresh descriptor nobody else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let check = |call: &'static str, result: io::Result<()>| {
        result.map_err(|source| socket_error(call, interface, source))
    };
    let fprog = libc::sock_fprog {
        len: u16::try_from(program.len()).unwrap_or(u16::MAX),
        filter: program.as_ptr().cast_mut(),
    };
    check(
        "SO_ATTACH_FILTER",
        setsockopt(fd, libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, &fprog),
    )?;
    let one: libc::c_int = 1;
    check(
        "PACKET_AUXDATA",
        setsockopt(fd, libc::SOL_PACKET, libc::PACKET_AUXDATA, &one),
    )?;
    check(
        "SO_TIMESTAMPNS",
        setsockopt(fd, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, &one),
    )?;
    // Frames this host sends are not netconsole traffic heard on the wire. Kernels before 4.20
    // lack the option; the peek's packet type (PACKET_OUTGOING) catches them there.
    match setsockopt(fd, libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING, &one) {
        Err(e) if e.raw_os_error() == Some(libc::ENOPROTOOPT) => {}
        result => check("PACKET_IGNORE_OUTGOING", result)?,
    }
    // A large buffer absorbs a sender's boot-time log replay. FORCE passes rmem_max as root;
    // without privilege the plain option still gets what rmem_max allows.
    let rcvbuf = libc::c_int::try_from(rcvbuf_bytes).unwrap_or(libc::c_int::MAX);
    if setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &rcvbuf).is_err() {
        let _ = setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, &rcvbuf);
    }
    Ok(socket)
}

/// pnet's two halves of a channel.
type Halves = (Box<dyn DataLinkSender>, Box<dyn DataLinkReceiver>);

/// Hands `socket` to pnet, which binds it to `interface`.
fn pnet_channel(interface: &Interface, socket: OwnedFd) -> Result<Halves, RawError> {
    let config = pnet_datalink::Config {
        read_buffer_size: MAX_FRAME,
        // Nothing is sent.
        write_buffer_size: 0,
        // pnet's wait for a frame ends after this, so a thread never blocks for long.
        read_timeout: Some(WAKE_INTERVAL),
        // --promisc holds a membership of its own (capture::promisc), for every backend.
        promiscuous: false,
        // pnet owns the descriptor from here on, and closes it if it fails.
        socket_fd: Some(socket.into_raw_fd()),
        ..pnet_datalink::Config::default()
    };
    // pnet's Linux channel uses only the index (to bind) of the interface description.
    let target = NetworkInterface {
        name: interface.name.clone(),
        description: String::new(),
        index: interface.ifindex,
        mac: None,
        ips: Vec::new(),
        flags: 0,
    };
    match pnet_datalink::channel(&target, config) {
        Ok(Channel::Ethernet(sender, receiver)) => Ok((sender, receiver)),
        Ok(_) => Err(socket_error(
            "pnet datalink channel",
            interface,
            io::Error::other("not an Ethernet channel"),
        )),
        Err(source) => Err(socket_error(
            "bind (pnet datalink channel)",
            interface,
            source,
        )),
    }
}

/// One interface's receive thread.
struct Receiver {
    interface: Interface,
    fd: RawFd,
    pnet: Box<dyn DataLinkReceiver>,
    counters: Arc<LinkCounters>,
    stop: Arc<AtomicBool>,
    out: mpsc::Sender<Message>,
}

impl Receiver {
    fn run(mut self) {
        if let Err(error) = self.receive() {
            tracing::debug!(interface = %self.interface.name, %error, "raw receive thread failed");
            // Waits for room: an error is never lost to a full channel (closing the channel
            // ends the wait).
            let _ = self.out.blocking_send(Err(error));
        }
    }

    /// Reads frames until shutdown: a peek for what pnet does not deliver, then pnet's read.
    fn receive(&mut self) -> Result<(), RawError> {
        let mut arena = BytesMut::with_capacity(ARENA_BYTES);
        let mut control = [0u64; CONTROL_LEN / 8];
        let mut stop_by = None;
        loop {
            if self.stop.load(Ordering::Relaxed) {
                let by = *stop_by.get_or_insert_with(|| Instant::now() + STOP_GRACE);
                if Instant::now() >= by {
                    return Ok(());
                }
            }
            let meta = match peek(self.fd, &mut control) {
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
            if meta.outgoing {
                continue;
            }
            self.counters.received.fetch_add(1, Ordering::Relaxed);
            if frame.len() < meta.len {
                self.counters.truncated.fetch_add(1, Ordering::Relaxed);
            }
            let (bytes, inserted) = restore_vlan_tag(&mut arena, frame, meta.vlan);
            let captured = Captured {
                ts: meta.ts.unwrap_or_else(Utc::now),
                ifindex: self.interface.ifindex,
                wire_len: u32::try_from(meta.len + inserted).unwrap_or(u32::MAX),
                link: LinkType::Ethernet,
                bytes,
            };
            // A full queue means the pipeline is behind: wait for room rather than drop, so
            // what arrives meanwhile waits in the socket buffer (--ring-mib), whose overflow the
            // kernel counts. The pipeline always either takes frames or closes the queue.
            if self.out.blocking_send(Ok(captured)).is_err() {
                self.counters.queue_full.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
        }
    }
}

/// Copies `frame` out of pnet's buffer, with the VLAN tag the kernel took out put back after
/// the two MAC addresses, so the frame is what was on the wire (for `-w` and for parsing).
/// Returns the frame and how many bytes were inserted.
fn restore_vlan_tag(
    arena: &mut BytesMut,
    frame: &[u8],
    vlan: Option<(u16, u16)>,
) -> (Bytes, usize) {
    arena.reserve(frame.len() + 4);
    match vlan {
        Some((tpid, tci)) if frame.len() >= 12 => {
            arena.extend_from_slice(&frame[..12]);
            arena.extend_from_slice(&tpid.to_be_bytes());
            arena.extend_from_slice(&tci.to_be_bytes());
            arena.extend_from_slice(&frame[12..]);
            (arena.split().freeze(), 4)
        }
        _ => {
            arena.extend_from_slice(frame);
            (arena.split().freeze(), 0)
        }
    }
}

/// What the peek learns about the next frame.
#[derive(Debug, Default, PartialEq, Eq)]
struct Meta {
    /// Its length (`MSG_TRUNC`), without a tag the kernel took out.
    len: usize,
    /// The kernel's receive time (`SCM_TIMESTAMPNS`).
    ts: Option<DateTime<Utc>>,
    /// `(TPID, TCI)` of the tag the kernel took out (`PACKET_AUXDATA`).
    vlan: Option<(u16, u16)>,
    /// This host sent it (`PACKET_OUTGOING`).
    outgoing: bool,
}

/// Looks at the next frame without taking it: its length, address and control messages.
fn peek(fd: RawFd, control: &mut [u64; CONTROL_LEN / 8]) -> io::Result<Meta> {
    // SAFETY: all-zero is a valid sockaddr_ll and msghdr.
    let mut address: libc::sockaddr_ll = unsafe { zeroed() };
    let mut header: libc::msghdr = unsafe { zeroed() };
    header.msg_name = (&raw mut address).cast();
    header.msg_namelen = libc::socklen_t::try_from(size_of::<libc::sockaddr_ll>()).unwrap_or(0);
    header.msg_control = control.as_mut_ptr().cast();
    header.msg_controllen = CONTROL_LEN;
    // No data buffer: with MSG_TRUNC the result is the frame's length all the same.
    // SAFETY: header points at live buffers of the lengths given.
    let len = unsafe {
        libc::recvmsg(
            fd,
            &raw mut header,
            libc::MSG_PEEK | libc::MSG_TRUNC | libc::MSG_DONTWAIT,
        )
    };
    let len = usize::try_from(len).map_err(|_| io::Error::last_os_error())?;
    // SAFETY: the kernel just filled the control buffer header describes.
    let mut meta = unsafe { control_messages(&header) };
    meta.len = len;
    meta.outgoing = address.sll_pkttype == libc::PACKET_OUTGOING;
    Ok(meta)
}

/// Waits until `fd` is readable or `timeout` passes.
fn wait_readable(fd: RawFd, timeout: Duration) -> io::Result<()> {
    let mut pollfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: one valid pollfd.
    if unsafe { libc::poll(&raw mut pollfd, 1, ms) } < 0 {
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
    Ok(())
}

/// Reads the receive timestamp and the VLAN tag out of the control messages.
///
/// # Safety
/// `header` must describe a control buffer filled by `recvmsg`.
unsafe fn control_messages(header: &libc::msghdr) -> Meta {
    let mut meta = Meta::default();
    // SAFETY: the caller guarantees a valid control buffer; CMSG_* walk within its length.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(header);
        while !cmsg.is_null() {
            let (level, kind) = ((*cmsg).cmsg_level, (*cmsg).cmsg_type);
            let data = libc::CMSG_DATA(cmsg);
            if level == libc::SOL_SOCKET && kind == libc::SCM_TIMESTAMPNS {
                let ts = std::ptr::read_unaligned(data.cast::<libc::timespec>());
                meta.ts =
                    DateTime::from_timestamp(ts.tv_sec, u32::try_from(ts.tv_nsec).unwrap_or(0));
            } else if level == libc::SOL_PACKET && kind == libc::PACKET_AUXDATA {
                let aux = std::ptr::read_unaligned(data.cast::<libc::tpacket_auxdata>());
                if aux.tp_status & libc::TP_STATUS_VLAN_VALID != 0 {
                    let tpid = if aux.tp_status & libc::TP_STATUS_VLAN_TPID_VALID != 0 {
                        aux.tp_vlan_tpid
                    } else {
                        0x8100
                    };
                    meta.vlan = Some((tpid, aux.tp_vlan_tci));
                }
            }
            cmsg = libc::CMSG_NXTHDR(header, cmsg);
        }
    }
    meta
}

/// `(packets, drops)` since the last call (`PACKET_STATISTICS` resets on read).
fn statistics(fd: RawFd) -> (u64, u64) {
    let mut stats = libc::tpacket_stats {
        tp_packets: 0,
        tp_drops: 0,
    };
    let mut len = libc::socklen_t::try_from(size_of::<libc::tpacket_stats>()).unwrap_or(0);
    // SAFETY: stats and len are valid for a tpacket_stats.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_PACKET,
            libc::PACKET_STATISTICS,
            (&raw mut stats).cast(),
            &raw mut len,
        )
    };
    if rc == 0 {
        (u64::from(stats.tp_packets), u64::from(stats.tp_drops))
    } else {
        (0, 0)
    }
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket;

    use super::*;
    use crate::capture::CaptureCounters;

    /// Runs `f` on a thread of its own in a fresh network namespace whose `lo` is up (threads
    /// and processes started from there share it); `None` without the privilege to make one.
    fn in_fresh_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        std::thread::spawn(move || {
            if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET) {
                eprintln!("skipped: cannot make a network namespace ({e}); needs root");
                return None;
            }
            let up = std::process::Command::new("ip")
                .args(["link", "set", "lo", "up"])
                .status();
            assert!(
                up.as_ref().is_ok_and(std::process::ExitStatus::success),
                "ip link set lo up: {up:?}"
            );
            Some(f())
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }

    fn loopback() -> Vec<Interface> {
        vec![Interface {
            name: "lo".into(),
            ifindex: 1,
        }]
    }

    fn send(datagrams: &[(u16, Vec<u8>)]) {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        for (port, payload) in datagrams {
            socket.send_to(payload, ("127.0.0.1", *port)).unwrap();
        }
    }

    /// Waits until the receive threads have read `n` frames.
    fn wait_received(capture: &mut RawCapture, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while capture.counters().received < n {
            assert!(Instant::now() < deadline, "{:?}", capture.counters());
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// `n` datagrams `NCT 0`, `NCT 1`, ... to port 6666.
    fn numbered(n: usize) -> Vec<(u16, Vec<u8>)> {
        (0..n).map(|i| (6666, format!("NCT {i}").into())).collect()
    }

    /// Checks that `frames` are `NCT 0`, `NCT 1`, ... in order.
    fn assert_numbered(frames: &[Captured]) {
        for (i, frame) in frames.iter().enumerate() {
            assert!(
                frame.bytes.ends_with(format!("NCT {i}").as_bytes()),
                "{frame:?}"
            );
        }
    }

    /// Receives until `frames` holds `n`.
    fn recv_until(capture: &mut RawCapture, frames: &mut Vec<Captured>, n: usize) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            while frames.len() < n {
                tokio::time::timeout(Duration::from_secs(10), capture.recv(frames))
                    .await
                    .expect("frames within 10 s")
                    .unwrap();
            }
        });
    }

    #[test]
    fn reads_matching_frames_once_with_kernel_time_and_length() {
        in_fresh_netns(|| {
            let mut capture = RawCapture::open(&loopback(), &[6666], 1 << 20).unwrap();
            let long = vec![b'x'; 3000];
            let before = Utc::now();
            // Another port first: the filter must keep it out. On lo every frame is also seen
            // going out: those copies must be skipped.
            send(&[
                (7777, b"NCT other port".to_vec()),
                (6666, b"NCT 0".to_vec()),
                (6666, b"NCT 1".to_vec()),
                (6666, long.clone()),
            ]);
            let mut frames = Vec::new();
            recv_until(&mut capture, &mut frames, 3);
            let after = Utc::now();
            capture.drain(&mut frames).unwrap();
            assert_eq!(frames.len(), 3, "{frames:#?}");
            for (frame, payload) in frames.iter().zip([&b"NCT 0"[..], b"NCT 1"]) {
                assert!(frame.bytes.ends_with(payload), "{frame:?}");
                assert_eq!(frame.wire_len as usize, frame.bytes.len());
            }
            // 14 + 20 + 8 header bytes, then the payload, cut at MAX_FRAME.
            assert_eq!(frames[2].bytes.len(), MAX_FRAME);
            assert_eq!(frames[2].wire_len as usize, 42 + long.len());
            for frame in &frames {
                assert_eq!(frame.ifindex, 1);
                assert_eq!(frame.link, LinkType::Ethernet);
                assert!(
                    before <= frame.ts && frame.ts <= after,
                    "kernel time {} not within {before} .. {after}",
                    frame.ts
                );
            }
            assert_eq!(
                capture.counters(),
                RawCounters {
                    received: 3,
                    kernel_received: 3,
                    kernel_dropped: 0,
                    truncated: 1,
                    queue_full: 0,
                }
            );
        });
    }

    #[test]
    fn a_full_queue_holds_frames_back_in_the_socket() {
        in_fresh_netns(|| {
            let mut capture =
                RawCapture::open_with_queue(&loopback(), &[6666], 1 << 20, 2).unwrap();
            send(&numbered(10));
            // Two queued, a third read and waiting for room; the rest stay in the socket.
            wait_received(&mut capture, 3);
            std::thread::sleep(Duration::from_millis(50));
            assert_eq!(capture.counters().received, 3, "{:?}", capture.counters());
            let mut frames = Vec::new();
            recv_until(&mut capture, &mut frames, 10);
            assert_numbered(&frames);
            let counters = capture.counters();
            assert_eq!(
                (
                    counters.received,
                    counters.kernel_dropped,
                    counters.queue_full
                ),
                (10, 0, 0),
                "{counters:?}"
            );
        });
    }

    #[test]
    fn a_frame_read_but_never_handed_over_is_counted() {
        in_fresh_netns(|| {
            let mut capture =
                RawCapture::open_with_queue(&loopback(), &[6666], 1 << 20, 1).unwrap();
            send(&numbered(5));
            wait_received(&mut capture, 2);
            // The pipeline goes away: the frame waiting for room is lost, and counted.
            capture.frames.close();
            let deadline = Instant::now() + Duration::from_secs(10);
            while !capture.links[0]
                .thread
                .as_ref()
                .is_some_and(JoinHandle::is_finished)
            {
                assert!(Instant::now() < deadline, "receive thread still running");
                std::thread::sleep(Duration::from_millis(5));
            }
            let counters = capture.counters();
            assert_eq!(
                (counters.received, counters.queue_full),
                (2, 1),
                "{counters:?}"
            );
            assert_eq!(CaptureCounters::Raw(counters).lost(), 1);
        });
    }

    #[test]
    fn drain_hands_over_every_frame_and_stops_the_threads() {
        in_fresh_netns(|| {
            let mut capture = RawCapture::open(&loopback(), &[6666], 1 << 20).unwrap();
            send(&numbered(200));
            // No recv: what the threads queued and what the socket still holds all comes out.
            let mut frames = Vec::new();
            capture.drain(&mut frames).unwrap();
            assert_eq!(frames.len(), 200);
            assert_numbered(&frames);
            assert!(capture.links.iter().all(|l| l.thread.is_none()));
            assert_eq!(capture.counters().received, 200);
        });
    }

    #[test]
    fn restores_the_vlan_tag_after_the_mac_addresses() {
        let mut arena = BytesMut::new();
        let frame: Vec<u8> = (0u8..20).collect();
        let (bytes, inserted) = restore_vlan_tag(&mut arena, &frame, Some((0x88a8, 0x2064)));
        assert_eq!(inserted, 4);
        assert_eq!(&bytes[..12], &frame[..12]);
        assert_eq!(&bytes[12..16], &[0x88, 0xa8, 0x20, 0x64]);
        assert_eq!(&bytes[16..], &frame[12..]);
        let (bytes, inserted) = restore_vlan_tag(&mut arena, &frame, None);
        assert_eq!((&bytes[..], inserted), (&frame[..], 0));
        // Too short to hold two MAC addresses: left as it is.
        let (bytes, inserted) = restore_vlan_tag(&mut arena, &frame[..11], Some((0x8100, 1)));
        assert_eq!((&bytes[..], inserted), (&frame[..11], 0));
    }

    #[expect(
        clippy::cast_possible_truncation,
        reason = "sizes of two small structs"
    )]
    const TIMESPEC_LEN: u32 = size_of::<libc::timespec>() as u32;
    #[expect(
        clippy::cast_possible_truncation,
        reason = "sizes of two small structs"
    )]
    const AUXDATA_LEN: u32 = size_of::<libc::tpacket_auxdata>() as u32;

    /// Fills `buffer` as `recvmsg` does (the timestamp, then the auxdata) and returns the
    /// header that describes it.
    fn control(buffer: &mut [u64; CONTROL_LEN / 8], aux: &libc::tpacket_auxdata) -> libc::msghdr {
        // SAFETY: all-zero is a valid msghdr; the CMSG_* calls stay within the buffer, which
        // has room for both messages.
        unsafe {
            let mut header: libc::msghdr = zeroed();
            header.msg_control = buffer.as_mut_ptr().cast();
            header.msg_controllen =
                (libc::CMSG_SPACE(TIMESPEC_LEN) + libc::CMSG_SPACE(AUXDATA_LEN)) as usize;
            let first = libc::CMSG_FIRSTHDR(&raw const header);
            (*first).cmsg_level = libc::SOL_SOCKET;
            (*first).cmsg_type = libc::SCM_TIMESTAMPNS;
            (*first).cmsg_len = libc::CMSG_LEN(TIMESPEC_LEN) as usize;
            let ts = libc::timespec {
                tv_sec: 1_700_000_000,
                tv_nsec: 123_456_789,
            };
            std::ptr::write_unaligned(libc::CMSG_DATA(first).cast(), ts);
            let second = libc::CMSG_NXTHDR(&raw const header, first);
            (*second).cmsg_level = libc::SOL_PACKET;
            (*second).cmsg_type = libc::PACKET_AUXDATA;
            (*second).cmsg_len = libc::CMSG_LEN(AUXDATA_LEN) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(second).cast(), *aux);
            header
        }
    }

    fn auxdata(status: u32, tci: u16, tpid: u16) -> libc::tpacket_auxdata {
        libc::tpacket_auxdata {
            tp_status: status,
            tp_len: 100,
            tp_snaplen: 100,
            tp_mac: 0,
            tp_net: 14,
            tp_vlan_tci: tci,
            tp_vlan_tpid: tpid,
        }
    }

    #[test]
    fn control_messages_give_time_and_tag() {
        let cases = [
            (
                libc::TP_STATUS_VLAN_VALID | libc::TP_STATUS_VLAN_TPID_VALID,
                Some((0x88a8, 100)),
            ),
            // No TPID from the kernel: 802.1Q.
            (libc::TP_STATUS_VLAN_VALID, Some((0x8100, 100))),
            (0, None),
        ];
        for (status, vlan) in cases {
            let mut buffer = [0u64; CONTROL_LEN / 8];
            let header = control(&mut buffer, &auxdata(status, 100, 0x88a8));
            // SAFETY: header describes the filled buffer, alive until the end of the loop.
            let meta = unsafe { control_messages(&header) };
            assert_eq!(
                meta,
                Meta {
                    len: 0,
                    ts: DateTime::from_timestamp(1_700_000_000, 123_456_789),
                    vlan,
                    outgoing: false,
                }
            );
        }
    }
}
