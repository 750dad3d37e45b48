//! The raw backend's packet socket: opened and filtered by netcon, bound and read by pnet;
//! the peek that learns what pnet does not deliver (the kernel's receive time, a VLAN tag the
//! kernel took out of the frame, the frame's length); the kernel's drop counters.

use std::{
    io,
    mem::{size_of, zeroed},
    os::fd::{FromRawFd, IntoRawFd, OwnedFd, RawFd},
    time::Duration,
};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use pnet_datalink::{Channel, DataLinkReceiver, DataLinkSender, NetworkInterface};

use super::{MAX_FRAME, RawError, WAKE_INTERVAL};
use crate::capture::{Interface, setsockopt};

/// Control message space for one peek: `tpacket_auxdata` and a `timespec`, with headers.
pub(super) const CONTROL_LEN: usize = 128;

/// Bytes of a frame the peek copies: Ethernet, two VLAN tags and an IPv6 header (62) with room.
pub(super) const HEAD_LEN: usize = 96;

/// Takes the next frame off the socket without copying it: for a frame that would only be
/// dropped (its sender's queue is full), one system call instead of pnet's two and a copy.
pub(super) fn discard(fd: RawFd) -> io::Result<()> {
    // SAFETY: a zero-length read into no buffer; MSG_TRUNC takes the whole datagram off.
    let rc = unsafe {
        libc::recv(
            fd,
            std::ptr::null_mut(),
            0,
            libc::MSG_TRUNC | libc::MSG_DONTWAIT,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

pub(super) fn socket_error(
    call: &'static str,
    interface: &Interface,
    source: io::Error,
) -> RawError {
    RawError::Socket {
        call,
        interface: interface.name.clone(),
        source,
    }
}

/// Opens an unbound packet socket with netcon's options and filter.
pub(super) fn prepare_socket(
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
pub(super) type Halves = (Box<dyn DataLinkSender>, Box<dyn DataLinkReceiver>);

/// Hands `socket` to pnet, which binds it to `interface`.
pub(super) fn pnet_channel(interface: &Interface, socket: OwnedFd) -> Result<Halves, RawError> {
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

/// Copies `frame` out of pnet's buffer into an allocation of its own (so a frame held in a
/// queue holds only its own bytes), with the VLAN tag the kernel took out put back after the
/// two MAC addresses, so the frame is what was on the wire (for `-w` and for parsing).
/// Returns the frame and how many bytes were inserted.
pub(super) fn restore_vlan_tag(frame: &[u8], vlan: Option<(u16, u16)>) -> (Bytes, usize) {
    match vlan {
        Some((tpid, tci)) if frame.len() >= 12 => {
            let mut copy = Vec::with_capacity(frame.len() + 4);
            copy.extend_from_slice(&frame[..12]);
            copy.extend_from_slice(&tpid.to_be_bytes());
            copy.extend_from_slice(&tci.to_be_bytes());
            copy.extend_from_slice(&frame[12..]);
            (Bytes::from(copy), 4)
        }
        _ => (Bytes::copy_from_slice(frame), 0),
    }
}

/// What the peek learns about the next frame.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Meta {
    /// Its length (`MSG_TRUNC`), without a tag the kernel took out.
    pub(super) len: usize,
    /// The kernel's receive time (`SCM_TIMESTAMPNS`).
    pub(super) ts: Option<DateTime<Utc>>,
    /// `(TPID, TCI)` of the tag the kernel took out (`PACKET_AUXDATA`).
    pub(super) vlan: Option<(u16, u16)>,
    /// This host sent it (`PACKET_OUTGOING`).
    pub(super) outgoing: bool,
}

/// Looks at the next frame without taking it: its length, address and control messages.
/// Copies its first `head.len()` bytes into `head` (enough for the headers that say who sent it).
pub(super) fn peek(
    fd: RawFd,
    control: &mut [u64; CONTROL_LEN / 8],
    head: &mut [u8; HEAD_LEN],
) -> io::Result<Meta> {
    // SAFETY: all-zero is a valid sockaddr_ll and msghdr.
    let mut address: libc::sockaddr_ll = unsafe { zeroed() };
    let mut header: libc::msghdr = unsafe { zeroed() };
    header.msg_name = (&raw mut address).cast();
    header.msg_namelen = libc::socklen_t::try_from(size_of::<libc::sockaddr_ll>()).unwrap_or(0);
    header.msg_control = control.as_mut_ptr().cast();
    header.msg_controllen = CONTROL_LEN;
    let mut iov = libc::iovec {
        iov_base: head.as_mut_ptr().cast(),
        iov_len: HEAD_LEN,
    };
    header.msg_iov = &raw mut iov;
    header.msg_iovlen = 1;
    // With MSG_TRUNC the result is the frame's whole length, however little is copied.
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
pub(super) fn wait_readable(fd: RawFd, timeout: Duration) -> io::Result<()> {
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
pub(super) unsafe fn control_messages(header: &libc::msghdr) -> Meta {
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
pub(super) fn statistics(fd: RawFd) -> (u64, u64) {
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
    use super::*;

    #[test]
    fn restores_the_vlan_tag_after_the_mac_addresses() {
        let frame: Vec<u8> = (0u8..20).collect();
        let (bytes, inserted) = restore_vlan_tag(&frame, Some((0x88a8, 0x2064)));
        assert_eq!(inserted, 4);
        assert_eq!(&bytes[..12], &frame[..12]);
        assert_eq!(&bytes[12..16], &[0x88, 0xa8, 0x20, 0x64]);
        assert_eq!(&bytes[16..], &frame[12..]);
        let (bytes, inserted) = restore_vlan_tag(&frame, None);
        assert_eq!((&bytes[..], inserted), (&frame[..], 0));
        // Too short to hold two MAC addresses: left as it is.
        let (bytes, inserted) = restore_vlan_tag(&frame[..11], Some((0x8100, 1)));
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
