//! The bench's network: a sender namespace and a receiver namespace joined by one veth pair
//! (`netcon_testkit`'s namespace guards, removed on drop, also on an error or a panic).
//! Addresses only inside them: `10.N.0.0/16` and `fd00:N::/64` with N = [`SUBNET`]; the /16
//! puts every simulated sender (`10.N.1.0` onwards) on the link.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{Context as _, Result};
pub use netcon_testkit::Netns;
use netcon_testkit::frame::parse_mac;

/// N of `10.N.0.0/16` and `fd00:N::/64` (the bench owns 90 to 99).
pub const SUBNET: u8 = 91;

/// Receiver-side interface.
pub const RX_IF: &str = "nbc0";
/// Sender-side interface.
pub const TX_IF: &str = "nbs0";
/// MAC of the receiver's interface.
pub const RX_MAC: &str = "02:00:00:00:91:01";
/// MAC of the sender's interface.
pub const TX_MAC: &str = "02:00:00:00:91:02";

/// Sender and receiver namespaces and the veth pair between them.
#[derive(Debug)]
pub struct Topology {
    /// Where netcon-load runs.
    pub sender: Netns,
    /// Where the receivers run.
    pub receiver: Netns,
}

impl Topology {
    /// Creates both namespaces and the link, with ICMP errors switched off in the receiver's
    /// namespace: frames to a port nobody listens on would otherwise make it answer (and look
    /// up neighbours for) thousands of simulated senders, work no real collector does for
    /// netconsole senders.
    pub fn new() -> Result<Self> {
        let topo = Self {
            sender: Netns::create("bench-tx")?,
            receiver: Netns::create("bench-rx")?,
        };
        let mac = |s| parse_mac(s).map_err(anyhow::Error::msg);
        topo.receiver
            .add_veth((RX_IF, mac(RX_MAC)?), &topo.sender, (TX_IF, mac(TX_MAC)?))?;
        topo.receiver
            .add_addresses(RX_IF, (Self::rx_v4(), 16), Some(Self::rx_v6()))?;
        topo.sender
            .add_addresses(TX_IF, (Self::tx_v4(), 16), Some(Self::tx_v6()))?;
        for key in ["net.ipv4.icmp_msgs_per_sec", "net.ipv4.icmp_msgs_burst"] {
            topo.receiver
                .sysctl(key, "0")
                .context("switching ICMP errors off in the receiver's namespace")?;
        }
        Ok(topo)
    }

    /// The receiver's IPv4 address.
    pub fn rx_v4() -> Ipv4Addr {
        Ipv4Addr::new(10, SUBNET, 0, 1)
    }

    /// The receiver's IPv6 address.
    pub fn rx_v6() -> Ipv6Addr {
        Ipv6Addr::new(0xfd00, u16::from(SUBNET), 0, 0, 0, 0, 0, 1)
    }

    fn tx_v4() -> Ipv4Addr {
        Ipv4Addr::new(10, SUBNET, 0, 2)
    }

    fn tx_v6() -> Ipv6Addr {
        Ipv6Addr::new(0xfd00, u16::from(SUBNET), 0, 0, 0, 0, 0, 2)
    }

    /// Sender 0's address; sender k has this plus k: `10.N.1.0` (up to 64,000 senders) or
    /// `fd00:N::1:0`.
    pub fn src_base(ipv6: bool) -> IpAddr {
        if ipv6 {
            IpAddr::V6(Ipv6Addr::new(0xfd00, u16::from(SUBNET), 0, 0, 0, 0, 1, 0))
        } else {
            IpAddr::V4(Ipv4Addr::new(10, SUBNET, 1, 0))
        }
    }
}
