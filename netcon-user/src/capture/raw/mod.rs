//! The raw backend: one `AF_PACKET` socket per interface, for kernels or privileges where the
//! XDP program cannot load.
//!
//! The sockets are made by hand rather than through pnet's datalink channel because pnet keeps
//! the descriptor to itself: netcon needs it for the socket filter, `PACKET_STATISTICS`,
//! `PACKET_AUXDATA` (VLAN tags the kernel took out of the frame), kernel timestamps, `recvmmsg`
//! batches and tokio's `AsyncFd`.

pub mod filter;

use std::{
    future::poll_fn,
    io,
    mem::{size_of, zeroed},
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    task::Poll,
};

use bytes::BytesMut;
use chrono::{DateTime, Utc};
use tokio::io::unix::AsyncFd;

use super::{Captured, LinkType, RawCounters, setsockopt};
use crate::config::Interface;

/// Longest frame read whole, bytes. Netconsole frames are under 1100 bytes
/// (`MAX_PRINT_CHUNK` = 1000 payload bytes plus headers); longer ones are cut and counted.
pub const MAX_FRAME: usize = 2048;

/// Frames read per `recvmmsg` call. Default 64.
pub const BATCH: usize = 64;

/// Control message space per frame: `tpacket_auxdata` and a `timespec`, with headers.
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
}

fn hint(error: &io::Error) -> &'static str {
    match error.raw_os_error() {
        Some(libc::EPERM | libc::EACCES) => " (needs root or CAP_NET_RAW)",
        _ => "",
    }
}

struct PacketSocket {
    fd: AsyncFd<OwnedFd>,
    interface: Interface,
    counters: RawCounters,
}

/// Packet sockets on each configured interface.
pub struct RawCapture {
    sockets: Vec<PacketSocket>,
    buffers: Box<RecvBuffers>,
    arena: BytesMut,
}

/// `recvmmsg` scratch space, kept between calls so reading allocates nothing.
struct RecvBuffers {
    frames: [[u8; MAX_FRAME]; BATCH],
    control: [[u64; CONTROL_LEN / 8]; BATCH],
}

impl RawCapture {
    /// Opens, filters and binds a packet socket on each interface.
    ///
    /// # Errors
    /// [`RawError`] when a socket call is refused.
    pub fn open(
        interfaces: &[Interface],
        ports: &[u16],
        rcvbuf_bytes: u32,
    ) -> Result<Self, RawError> {
        let program = filter::program(ports);
        let sockets = interfaces
            .iter()
            .map(|interface| {
                let fd = open_socket(interface, &program, rcvbuf_bytes)?;
                // SAFETY: the OwnedFd stays open and the same for the AsyncFd's lifetime.
                let fd =
                    unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
                        .map_err(|e| RawError::Socket {
                        call: "epoll registration",
                        interface: interface.name.clone(),
                        source: e.into(),
                    })?;
                Ok(PacketSocket {
                    fd,
                    interface: interface.clone(),
                    counters: RawCounters::default(),
                })
            })
            .collect::<Result<_, RawError>>()?;
        Ok(Self {
            sockets,
            // SAFETY: all-zero bytes are valid for arrays of integers.
            buffers: Box::new(unsafe { zeroed() }),
            arena: BytesMut::new(),
        })
    }

    /// Waits until frames arrive, then appends what all sockets hold.
    ///
    /// # Errors
    /// [`RawError`] when reading fails.
    pub async fn recv(&mut self, out: &mut Vec<Captured>) -> Result<(), RawError> {
        loop {
            // Readiness is cleared before reading to the end, so nothing that arrives after
            // the read can be missed.
            poll_fn(|cx| {
                let mut ready = false;
                for socket in &self.sockets {
                    match socket.fd.poll_read_ready(cx) {
                        Poll::Ready(Ok(mut guard)) => {
                            guard.clear_ready();
                            ready = true;
                        }
                        Poll::Ready(Err(source)) => {
                            return Poll::Ready(Err(RawError::Socket {
                                call: "poll",
                                interface: socket.interface.name.clone(),
                                source,
                            }));
                        }
                        Poll::Pending => {}
                    }
                }
                if ready {
                    Poll::Ready(Ok(()))
                } else {
                    Poll::Pending
                }
            })
            .await?;
            self.drain(out)?;
            if !out.is_empty() {
                return Ok(());
            }
        }
    }

    /// Appends whatever the sockets hold now, without waiting.
    ///
    /// # Errors
    /// [`RawError`] when reading fails.
    pub fn drain(&mut self, out: &mut Vec<Captured>) -> Result<(), RawError> {
        for socket in &mut self.sockets {
            while read_batch(socket, &mut self.buffers, &mut self.arena, out)? == BATCH {}
        }
        Ok(())
    }

    /// Counters of all sockets, with the kernel's drop count.
    #[must_use]
    pub fn counters(&mut self) -> RawCounters {
        let mut total = RawCounters::default();
        for socket in &mut self.sockets {
            let (packets, drops) = statistics(socket.fd.get_ref().as_raw_fd());
            // PACKET_STATISTICS resets on read: accumulate.
            socket.counters.kernel_received += packets;
            socket.counters.kernel_dropped += drops;
            total.add(&socket.counters);
        }
        total
    }
}

fn socket_error(call: &'static str, interface: &Interface) -> RawError {
    RawError::Socket {
        call,
        interface: interface.name.clone(),
        source: io::Error::last_os_error(),
    }
}

fn open_socket(
    interface: &Interface,
    program: &[libc::sock_filter],
    rcvbuf_bytes: u32,
) -> Result<OwnedFd, RawError> {
    let protocol = i32::from(u16::try_from(libc::ETH_P_ALL).unwrap_or_default().to_be());
    // SAFETY: plain socket(2); checked below.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            protocol,
        )
    };
    if fd < 0 {
        return Err(socket_error("socket(AF_PACKET)", interface));
    }
    // SAFETY: a fresh descriptor nobody else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let check = |call: &'static str, result: io::Result<()>| {
        result.map_err(|source| RawError::Socket {
            call,
            interface: interface.name.clone(),
            source,
        })
    };
    // The filter goes on before bind, so no unfiltered frame is ever queued.
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
    // Frames this host sends are not netconsole traffic heard on the wire.
    check(
        "PACKET_IGNORE_OUTGOING",
        setsockopt(fd, libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING, &one),
    )?;
    check(
        "SO_TIMESTAMPNS",
        setsockopt(fd, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, &one),
    )?;
    // A large buffer absorbs a sender's boot-time log replay. FORCE passes rmem_max as root;
    // without privilege the plain option still gets what rmem_max allows.
    let rcvbuf = libc::c_int::try_from(rcvbuf_bytes).unwrap_or(libc::c_int::MAX);
    if setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &rcvbuf).is_err() {
        let _ = setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, &rcvbuf);
    }
    // SAFETY: all-zero is a valid sockaddr_ll.
    let mut address: libc::sockaddr_ll = unsafe { zeroed() };
    address.sll_family = u16::try_from(libc::AF_PACKET).unwrap_or_default();
    address.sll_protocol = u16::try_from(libc::ETH_P_ALL).unwrap_or_default().to_be();
    address.sll_ifindex = i32::try_from(interface.ifindex).unwrap_or_default();
    // SAFETY: address is a valid sockaddr_ll and its size is passed.
    let rc = unsafe {
        libc::bind(
            fd,
            (&raw const address).cast(),
            libc::socklen_t::try_from(size_of::<libc::sockaddr_ll>()).unwrap_or(0),
        )
    };
    if rc != 0 {
        return Err(socket_error("bind", interface));
    }
    Ok(socket)
}

/// Reads one `recvmmsg` batch; returns how many frames it read (0 when nothing was waiting).
fn read_batch(
    socket: &mut PacketSocket,
    buffers: &mut RecvBuffers,
    arena: &mut BytesMut,
    out: &mut Vec<Captured>,
) -> Result<usize, RawError> {
    // SAFETY: all-zero iovec/mmsghdr are valid; pointers are filled in below.
    let mut iov: [libc::iovec; BATCH] = unsafe { zeroed() };
    let mut messages: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
    for i in 0..BATCH {
        iov[i] = libc::iovec {
            iov_base: buffers.frames[i].as_mut_ptr().cast(),
            iov_len: MAX_FRAME,
        };
        messages[i].msg_hdr.msg_iov = &raw mut iov[i];
        messages[i].msg_hdr.msg_iovlen = 1;
        messages[i].msg_hdr.msg_control = buffers.control[i].as_mut_ptr().cast();
        messages[i].msg_hdr.msg_controllen = CONTROL_LEN;
    }
    let fd = socket.fd.get_ref().as_raw_fd();
    // SAFETY: every message points at live buffers of the lengths given.
    let received = unsafe {
        libc::recvmmsg(
            fd,
            messages.as_mut_ptr(),
            u32::try_from(BATCH).unwrap_or(1),
            libc::MSG_TRUNC,
            std::ptr::null_mut(),
        )
    };
    if received < 0 {
        let source = io::Error::last_os_error();
        return match source.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
            _ => Err(RawError::Socket {
                call: "recvmmsg",
                interface: socket.interface.name.clone(),
                source,
            }),
        };
    }
    let received = usize::try_from(received).unwrap_or(0);
    for (message, frame) in messages.iter().zip(&buffers.frames).take(received) {
        // With MSG_TRUNC, msg_len is the frame's real length even when it was cut.
        let wire_len = message.msg_len as usize;
        let captured = wire_len.min(MAX_FRAME);
        if captured < wire_len {
            socket.counters.truncated += 1;
        }
        // SAFETY: msg_hdr describes the control buffer the kernel just filled.
        let meta = unsafe { control_messages(&message.msg_hdr) };
        let before = arena.len();
        arena.reserve(captured + 4);
        match meta.vlan {
            // Put back the tag the kernel took out, after the two MAC addresses, so the frame
            // is what was on the wire (for -w and for parsing).
            Some((tpid, tci)) if captured >= 12 => {
                arena.extend_from_slice(&frame[..12]);
                arena.extend_from_slice(&tpid.to_be_bytes());
                arena.extend_from_slice(&tci.to_be_bytes());
                arena.extend_from_slice(&frame[12..captured]);
            }
            _ => arena.extend_from_slice(&frame[..captured]),
        }
        let extra = arena.len() - before - captured;
        socket.counters.received += 1;
        out.push(Captured {
            ts: meta.ts.unwrap_or_else(Utc::now),
            ifindex: socket.interface.ifindex,
            wire_len: u32::try_from(wire_len + extra).unwrap_or(u32::MAX),
            link: LinkType::Ethernet,
            bytes: arena.split().freeze(),
        });
    }
    Ok(received)
}

#[derive(Default)]
struct Meta {
    ts: Option<DateTime<Utc>>,
    vlan: Option<(u16, u16)>,
}

/// Reads the receive timestamp and the VLAN tag out of the control messages.
///
/// # Safety
/// `header` must describe a control buffer filled by `recvmsg`/`recvmmsg`.
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
