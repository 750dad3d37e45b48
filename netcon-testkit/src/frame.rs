//! Crafting raw Ethernet frames carrying one UDP datagram, built with `etherparse` so that
//! lengths and checksums are right by construction.

use std::net::{IpAddr, SocketAddr};

use etherparse::{PacketBuilder, VlanId};

use crate::netns::{Link, Mac};

/// Netconsole's default source port.
pub const NETCONSOLE_SRC_PORT: u16 = 6665;
/// Netconsole's default destination port (and `netcon-sniff`'s default).
pub const NETCONSOLE_DST_PORT: u16 = 6666;
/// IPv4 TTL netconsole uses.
const TTL: u8 = 64;
/// IPv6 hop limit netconsole uses.
const HOP_LIMIT: u8 = 32;

/// VLAN tagging of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vlan {
    /// No tag.
    None,
    /// One 802.1Q tag (TPID 0x8100).
    Single(u16),
    /// An 802.1ad tag (TPID 0x88a8) outside an 802.1Q tag (0x8100).
    Double {
        /// VLAN id of the outer (service) tag.
        outer: u16,
        /// VLAN id of the inner (customer) tag.
        inner: u16,
    },
}

/// A UDP datagram in an Ethernet frame; [`UdpFrame::build`] gives the bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpFrame {
    /// Ethernet source.
    pub src_mac: Mac,
    /// Ethernet destination.
    pub dst_mac: Mac,
    /// Tags between the Ethernet header and IP.
    pub vlan: Vlan,
    /// IP source and UDP source port.
    pub src: SocketAddr,
    /// IP destination and UDP destination port (same family as `src`).
    pub dst: SocketAddr,
    /// UDP payload.
    pub payload: Vec<u8>,
}

impl UdpFrame {
    /// From the sender to the collector over `link`, IPv4: MACs of both ends, 10.N.0.10:6665 →
    /// 10.N.0.1:6666, untagged.
    #[must_use]
    pub fn v4(link: &Link, payload: impl Into<Vec<u8>>) -> UdpFrame {
        UdpFrame {
            src_mac: link.sender_mac,
            dst_mac: link.collector_mac,
            vlan: Vlan::None,
            src: SocketAddr::new(link.sender_v4.into(), NETCONSOLE_SRC_PORT),
            dst: SocketAddr::new(link.collector_v4.into(), NETCONSOLE_DST_PORT),
            payload: payload.into(),
        }
    }

    /// As [`UdpFrame::v4`] but IPv6: `[fd00:N::10]:6665` → `[fd00:N::1]:6666`.
    #[must_use]
    pub fn v6(link: &Link, payload: impl Into<Vec<u8>>) -> UdpFrame {
        UdpFrame {
            src: SocketAddr::new(link.sender_v6.into(), NETCONSOLE_SRC_PORT),
            dst: SocketAddr::new(link.collector_v6.into(), NETCONSOLE_DST_PORT),
            ..UdpFrame::v4(link, payload)
        }
    }

    /// With another Ethernet destination.
    #[must_use]
    pub fn dst_mac(mut self, mac: Mac) -> UdpFrame {
        self.dst_mac = mac;
        self
    }

    /// With another destination IP (keeps the port).
    #[must_use]
    pub fn dst_ip(mut self, ip: impl Into<IpAddr>) -> UdpFrame {
        self.dst.set_ip(ip.into());
        self
    }

    /// With another destination port.
    #[must_use]
    pub fn dst_port(mut self, port: u16) -> UdpFrame {
        self.dst.set_port(port);
        self
    }

    /// With another source port.
    #[must_use]
    pub fn src_port(mut self, port: u16) -> UdpFrame {
        self.src.set_port(port);
        self
    }

    /// With VLAN tags.
    #[must_use]
    pub fn vlan(mut self, vlan: Vlan) -> UdpFrame {
        self.vlan = vlan;
        self
    }

    /// The frame's bytes.
    ///
    /// # Panics
    /// If source and destination are of different IP families, a VLAN id is above 4095, or the
    /// payload does not fit in a UDP datagram.
    #[must_use]
    pub fn build(&self) -> Vec<u8> {
        let eth = PacketBuilder::ethernet2(self.src_mac, self.dst_mac);
        let vid = |v: u16| VlanId::try_new(v).unwrap_or_else(|e| panic!("VLAN id {v}: {e}"));
        let (sp, dp) = (self.src.port(), self.dst.port());
        let mut out = Vec::new();
        // PacketBuilder's steps are distinct types, hence one arm per combination.
        macro_rules! finish {
            ($step:expr) => {{
                let udp = match (self.src.ip(), self.dst.ip()) {
                    (IpAddr::V4(s), IpAddr::V4(d)) => {
                        $step.ipv4(s.octets(), d.octets(), TTL).udp(sp, dp)
                    }
                    (IpAddr::V6(s), IpAddr::V6(d)) => {
                        $step.ipv6(s.octets(), d.octets(), HOP_LIMIT).udp(sp, dp)
                    }
                    (s, d) => panic!("mixed IP families: {s} -> {d}"),
                };
                out.reserve(udp.size(self.payload.len()));
                udp.write(&mut out, &self.payload)
                    .unwrap_or_else(|e| panic!("cannot build frame {self:?}: {e}"));
            }};
        }
        match self.vlan {
            Vlan::None => finish!(eth),
            Vlan::Single(v) => finish!(eth.single_vlan(vid(v))),
            Vlan::Double { outer, inner } => finish!(eth.double_vlan(vid(outer), vid(inner))),
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use etherparse::{EtherType, LinkSlice, NetSlice, SlicedPacket, TransportSlice};

    use super::*;

    fn link() -> Link {
        Link {
            subnet: 1,
            sender: 0,
            sender_if: "veth-s1".into(),
            collector_if: "veth-c1".into(),
            sender_mac: [2, 0, 0, 0, 1, 0x10],
            collector_mac: [2, 0, 0, 0, 1, 1],
            sender_v4: Ipv4Addr::new(10, 1, 0, 10),
            collector_v4: Ipv4Addr::new(10, 1, 0, 1),
            sender_v6: "fd00:1::10".parse().unwrap(),
            collector_v6: "fd00:1::1".parse().unwrap(),
        }
    }

    /// RFC 1071 ones' complement sum, written independently of etherparse so that the check is
    /// not etherparse verifying itself.
    fn ones_sum(mut acc: u32, bytes: &[u8]) -> u32 {
        for pair in bytes.chunks(2) {
            let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
            acc += u32::from(word);
        }
        acc
    }

    fn fold(mut acc: u32) -> u16 {
        while acc > 0xffff {
            acc = (acc & 0xffff) + (acc >> 16);
        }
        u16::try_from(acc).unwrap()
    }

    /// Checks the IPv4 header checksum and the UDP checksum of an untagged or tagged frame whose
    /// IP header starts at `ip_off`.
    fn assert_checksums(frame: &[u8], ip_off: usize) {
        let ip = &frame[ip_off..];
        match ip[0] >> 4 {
            4 => {
                let ihl = usize::from(ip[0] & 0xf) * 4;
                assert_eq!(
                    fold(ones_sum(0, &ip[..ihl])),
                    0xffff,
                    "IPv4 header checksum"
                );
                let udp = &ip[ihl..];
                let mut pseudo = Vec::new();
                pseudo.extend_from_slice(&ip[12..20]);
                pseudo.extend_from_slice(&[0, 17]);
                pseudo.extend_from_slice(&u16::try_from(udp.len()).unwrap().to_be_bytes());
                assert_ne!(&udp[6..8], &[0, 0], "UDP checksum is filled in");
                assert_eq!(
                    fold(ones_sum(ones_sum(0, &pseudo), udp)),
                    0xffff,
                    "UDP checksum"
                );
            }
            6 => {
                let udp = &ip[40..];
                let mut pseudo = Vec::new();
                pseudo.extend_from_slice(&ip[8..40]);
                pseudo.extend_from_slice(&u32::try_from(udp.len()).unwrap().to_be_bytes());
                pseudo.extend_from_slice(&[0, 0, 0, 17]);
                assert_eq!(
                    fold(ones_sum(ones_sum(0, &pseudo), udp)),
                    0xffff,
                    "UDP checksum"
                );
            }
            v => panic!("IP version {v}"),
        }
    }

    #[test]
    fn untagged_ipv4_fields_and_checksums() {
        let f = UdpFrame::v4(&link(), b"hello\n".to_vec()).build();
        assert_eq!(f.len(), 14 + 20 + 8 + 6);
        assert_eq!(&f[0..6], &[2, 0, 0, 0, 1, 1], "destination MAC");
        assert_eq!(&f[6..12], &[2, 0, 0, 0, 1, 0x10], "source MAC");
        assert_eq!(&f[12..14], &[0x08, 0x00]);
        assert_eq!(f[14 + 8], 64, "TTL");
        assert_checksums(&f, 14);
        let p = SlicedPacket::from_ethernet(&f).unwrap();
        let Some(NetSlice::Ipv4(ip)) = &p.net else {
            panic!("not IPv4: {p:?}")
        };
        assert_eq!(ip.header().source_addr(), Ipv4Addr::new(10, 1, 0, 10));
        assert_eq!(ip.header().destination_addr(), Ipv4Addr::new(10, 1, 0, 1));
        let Some(TransportSlice::Udp(udp)) = &p.transport else {
            panic!("not UDP")
        };
        assert_eq!((udp.source_port(), udp.destination_port()), (6665, 6666));
        assert_eq!(udp.payload(), b"hello\n");
    }

    #[test]
    fn single_vlan_ipv4() {
        let f = UdpFrame::v4(&link(), b"tagged".to_vec())
            .vlan(Vlan::Single(42))
            .build();
        assert_eq!(&f[12..14], &[0x81, 0x00], "802.1Q TPID");
        assert_eq!(u16::from_be_bytes([f[14], f[15]]) & 0xfff, 42);
        assert_eq!(&f[16..18], &[0x08, 0x00]);
        assert_checksums(&f, 18);
        let p = SlicedPacket::from_ethernet(&f).unwrap();
        let ids: Vec<u16> = p.vlan_ids().iter().map(|v| v.value()).collect();
        assert_eq!(ids, [42]);
        let Some(TransportSlice::Udp(udp)) = &p.transport else {
            panic!("not UDP")
        };
        assert_eq!(udp.payload(), b"tagged");
    }

    #[test]
    fn double_vlan_ipv6_broadcast() {
        let l = link();
        let f = UdpFrame::v6(&l, b"qinq".to_vec())
            .dst_mac([0xff; 6])
            .dst_ip(l.foreign_v6())
            .dst_port(6667)
            .vlan(Vlan::Double {
                outer: 100,
                inner: 200,
            })
            .build();
        assert_eq!(&f[0..6], &[0xff; 6]);
        assert_eq!(&f[12..14], &[0x88, 0xa8], "802.1ad outer TPID");
        assert_eq!(u16::from_be_bytes([f[14], f[15]]) & 0xfff, 100);
        assert_eq!(&f[16..18], &[0x81, 0x00], "802.1Q inner TPID");
        assert_eq!(u16::from_be_bytes([f[18], f[19]]) & 0xfff, 200);
        assert_eq!(&f[20..22], &[0x86, 0xdd]);
        assert_eq!(f[22 + 7], 32, "hop limit");
        assert_checksums(&f, 22);
        let p = SlicedPacket::from_ethernet(&f).unwrap();
        let Some(LinkSlice::Ethernet2(eth)) = &p.link else {
            panic!("not Ethernet II")
        };
        assert_eq!(eth.ether_type(), EtherType::PROVIDER_BRIDGING);
        let ids: Vec<u16> = p.vlan_ids().iter().map(|v| v.value()).collect();
        assert_eq!(ids, [100, 200]);
        let Some(NetSlice::Ipv6(ip)) = &p.net else {
            panic!("not IPv6")
        };
        assert_eq!(
            ip.header().source_addr(),
            "fd00:1::10".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(
            ip.header().destination_addr(),
            "fd00:1::99".parse::<Ipv6Addr>().unwrap()
        );
        let Some(TransportSlice::Udp(udp)) = &p.transport else {
            panic!("not UDP")
        };
        assert_eq!((udp.source_port(), udp.destination_port()), (6665, 6667));
        assert_eq!(udp.payload(), b"qinq");
    }

    #[test]
    fn odd_length_payload_checksum() {
        let f = UdpFrame::v4(&link(), vec![0xff, 0x00, 0x1b]).build();
        assert_checksums(&f, 14);
    }

    #[test]
    #[should_panic(expected = "mixed IP families")]
    fn mixed_families_panic() {
        let l = link();
        let _ = UdpFrame::v4(&l, b"x".to_vec())
            .dst_ip(l.collector_v6)
            .build();
    }
}
