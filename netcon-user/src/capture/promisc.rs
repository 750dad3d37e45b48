//! Promiscuous mode through a `PACKET_MR_PROMISC` membership on a packet socket.
//!
//! The kernel counts memberships and drops ours when the socket closes, also when the process is
//! killed, so the interface is always left as it was found (unlike setting `IFF_PROMISC`).

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

/// Why promiscuous mode could not be turned on.
#[derive(Debug, thiserror::Error)]
pub enum PromiscError {
    /// The packet socket could not be opened.
    #[error("cannot open a packet socket for --promisc (needs CAP_NET_RAW): {source}")]
    Socket {
        #[source]
        source: io::Error,
    },
    /// The membership was refused.
    #[error("cannot put {interface} into promiscuous mode: {source}")]
    Membership {
        interface: String,
        #[source]
        source: io::Error,
    },
}

/// Holds an interface in promiscuous mode until dropped.
#[derive(Debug)]
pub struct PromiscGuard {
    _socket: OwnedFd,
}

impl PromiscGuard {
    /// Adds a promiscuous membership on `ifindex`.
    ///
    /// # Errors
    /// [`PromiscError`] when the socket or the membership is refused.
    pub fn new(interface: &str, ifindex: u32) -> Result<Self, PromiscError> {
        // Protocol 0: the socket receives no frames; it exists only to hold the membership.
        // SAFETY: plain socket(2) call; the result is checked before use.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(PromiscError::Socket {
                source: io::Error::last_os_error(),
            });
        }
        // SAFETY: fd is a fresh, valid descriptor that nothing else owns.
        let socket = unsafe { OwnedFd::from_raw_fd(fd) };
        let mreq = libc::packet_mreq {
            mr_ifindex: i32::try_from(ifindex).unwrap_or(i32::MAX),
            mr_type: u16::try_from(libc::PACKET_MR_PROMISC).unwrap_or_default(),
            mr_alen: 0,
            mr_address: [0; 8],
        };
        let added = super::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_ADD_MEMBERSHIP,
            &mreq,
        );
        added.map_err(|source| PromiscError::Membership {
            interface: interface.to_owned(),
            source,
        })?;
        Ok(Self { _socket: socket })
    }
}
