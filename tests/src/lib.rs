//! End-to-end test harness for `netcon-sniff` (issue 2).
//!
//! - [`Topology`] / [`Netns`]: network namespaces joined by veth pairs, removed on drop (also when
//!   a test panics).
//! - [`UdpFrame`]: raw Ethernet frames with any MACs, zero to two VLAN tags, IPv4 or IPv6, UDP
//!   with correct checksums.
//! - [`FrameSender`]: sends frames out of an interface inside a namespace (`AF_PACKET`).
//! - [`Sniffer`]: runs the real binary in the collector namespace and checks what it prints.
//!
//! Only addresses inside the namespaces these helpers create are ever used: 10.N.0.0/24 and
//! `fd00:N::/64`.

pub mod frame;
pub mod netns;
pub mod sender;
pub mod sniffer;

pub use frame::{NETCONSOLE_DST_PORT, NETCONSOLE_SRC_PORT, UdpFrame, Vlan};
pub use netns::{
    ALL_NODES_MAC, BROADCAST_MAC, Link, Mac, Netns, Topology, ip, mac_to_string, netns_list,
    require_root,
};
pub use sender::FrameSender;
pub use sniffer::{LINE_TIMEOUT, RawLine, Sniffer, Summary, sniff_binary};
