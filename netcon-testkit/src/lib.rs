//! Test support for netcon: the end-to-end tests, xtask (bench, vm-test) and the benchmark tools share it.
//!
//! - [`Topology`] / [`Netns`]: network namespaces joined by veth pairs (or holding a tap device),
//!   removed on drop (also when a test panics); every call also comes in a form that returns a
//!   [`NetnsError`] instead of panicking, for xtask.
//! - [`UdpFrame`] / [`frame::write_udp`]: raw Ethernet frames with any MACs, zero to two VLAN
//!   tags, IPv4 or IPv6, UDP with correct checksums; the latter appends into a buffer without
//!   allocating, for the load generator.
//! - [`FrameSender`]: sends frames out of an interface inside a namespace (`AF_PACKET`), one at a
//!   time or in `sendmmsg` batches.
//! - [`Sniffer`]: runs the real binary in the collector namespace (or offline, on a file) and
//!   checks what it prints; [`Stats`] and [`Summary`] read its counters (`--stats-format
//!   json`) for every backend. xtask starts its own command lines with it too.
//! - [`PcapFile`]: an independent classic pcap reader; [`tcpdump_read`]: a file as Debian's
//!   tcpdump decodes it; [`fixture`]: the real kernel captures in
//!   `netcon-user/tests/data/`.
//!
//! Only addresses inside the namespaces these helpers create are ever used: 10.N.0.0/24 and
//! `fd00:N::/64`.

pub mod files;
pub mod frame;
pub mod nats;
pub mod netns;
pub mod outputs;
pub mod pcap;
pub mod prometheus;
pub mod route;
pub mod rsyslog;
pub mod sender;
pub mod sniffer;
pub mod tcpdump;

pub use files::{TempDir, fixture, run_bounded, write_file};
pub use frame::{NETCONSOLE_DST_PORT, NETCONSOLE_SRC_PORT, UdpFrame, Vlan};
pub use netns::{
    ALL_NODES_MAC, BROADCAST_MAC, Link, Mac, Netns, NetnsError, Topology, ip, mac_to_string,
    netns_list, require_root,
};
pub use pcap::{LINKTYPE_ETHERNET, PcapFile, PcapRecord};
pub use sender::{BatchSent, FrameSender, SendError, SendScratch};
pub use sniffer::{
    CaptureBackend, FileCounters, FileRun, LINE_TIMEOUT, RawCounters, RawLine, STATS_PREFIX,
    Sniffer, Stats, StdoutTo, Summary, XdpCounters, rfc3339_micros, sniff_binary, unescape,
    without_stats,
};
pub use tcpdump::{TcpdumpFrame, TcpdumpOutput, VlanTag, tcpdump_binary, tcpdump_read};
