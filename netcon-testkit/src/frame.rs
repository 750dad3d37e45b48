//! Crafting raw Ethernet frames carrying one UDP datagram, both checksums filled in:
//! [`UdpFrame`] for tests that describe one frame, [`write_udp`] for a load generator that
//! appends thousands into one buffer without allocating. Fields as netconsole sends them
//! (`drivers/net/netconsole.c` via `netpoll_send_udp`: TTL 64, hop limit 32, don't fragment,
//! UDP checksum set). Written by hand rather than with etherparse's `PacketBuilder`, which took
//! a quarter longer per frame in the load generator's loop; the tests check every byte with
//! etherparse's parser and a checksum written independently of this one.

use std::net::{IpAddr, SocketAddr};

use crate::netns::{Link, Mac};

/// Ethernet header length, bytes.
pub const ETH_LEN: usize = 14;
/// IPv4 header length without options, bytes.
pub const IPV4_LEN: usize = 20;
/// IPv6 header length, bytes.
pub const IPV6_LEN: usize = 40;
/// UDP header length, bytes.
pub const UDP_LEN: usize = 8;
/// Largest untagged frame carrying a netconsole payload (at most 1000 bytes) over IPv6.
pub const MAX_NETCONSOLE_FRAME: usize = ETH_LEN + IPV6_LEN + UDP_LEN + 1000;

// EtherTypes and VLAN tag protocol identifiers (IEEE 802.1Q, 802.1ad).
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const TPID_8021Q: u16 = 0x8100;
const TPID_8021AD: u16 = 0x88a8;
/// IP protocol number of UDP.
const IPPROTO_UDP: u8 = 17;

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
    /// As [`write_udp`].
    #[must_use]
    pub fn build(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(ETH_LEN + 8 + IPV6_LEN + UDP_LEN + self.payload.len());
        write_udp(
            &mut out,
            (self.src_mac, self.dst_mac),
            self.vlan,
            self.src,
            self.dst,
            &self.payload,
        );
        out
    }
}

/// Appends one Ethernet frame from `src_mac` to `dst_mac`, tagged as `vlan`, carrying `payload`
/// in a UDP datagram from `src` to `dst`, to `out`. Allocates nothing once `out` has room.
///
/// # Panics
/// If source and destination are of different IP families, a VLAN id is above 4095, or the
/// payload does not fit in one IP packet.
pub fn write_udp(
    out: &mut Vec<u8>,
    (src_mac, dst_mac): (Mac, Mac),
    vlan: Vlan,
    src: SocketAddr,
    dst: SocketAddr,
    payload: &[u8],
) {
    let udp_len = UDP_LEN + payload.len();
    out.extend_from_slice(&dst_mac);
    out.extend_from_slice(&src_mac);
    match vlan {
        Vlan::None => {}
        Vlan::Single(id) => write_tag(out, TPID_8021Q, id),
        Vlan::Double { outer, inner } => {
            write_tag(out, TPID_8021AD, outer);
            write_tag(out, TPID_8021Q, inner);
        }
    }
    let pseudo = match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let total = u16::try_from(IPV4_LEN + udp_len)
                .unwrap_or_else(|_| panic!("a {}-byte payload is too big for IPv4", payload.len()));
            out.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
            let ip_start = out.len();
            out.extend_from_slice(&[0x45, 0]);
            out.extend_from_slice(&total.to_be_bytes());
            // Identification 0, don't fragment (netpoll sets IP_DF), TTL, UDP, checksum later.
            out.extend_from_slice(&[0, 0, 0x40, 0, TTL, IPPROTO_UDP, 0, 0]);
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
            let sum = !fold(ones_sum(0, &out[ip_start..]));
            out[ip_start + 10..ip_start + 12].copy_from_slice(&sum.to_be_bytes());
            pseudo_header_sum(&s.octets(), &d.octets(), udp_len)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let len = u16::try_from(udp_len)
                .unwrap_or_else(|_| panic!("a {}-byte payload is too big for UDP", payload.len()));
            out.extend_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
            out.extend_from_slice(&[0x60, 0, 0, 0]);
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(&[IPPROTO_UDP, HOP_LIMIT]);
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
            pseudo_header_sum(&s.octets(), &d.octets(), udp_len)
        }
        (s, d) => panic!("mixed IP families: {s} -> {d}"),
    };
    let udp_start = out.len();
    // Fits: checked against the IP length above.
    let udp_len = u16::try_from(udp_len).unwrap_or(u16::MAX);
    out.extend_from_slice(&src.port().to_be_bytes());
    out.extend_from_slice(&dst.port().to_be_bytes());
    out.extend_from_slice(&udp_len.to_be_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(payload);
    let sum = !fold(ones_sum(pseudo, &out[udp_start..]));
    // RFC 768: a computed 0 is sent as all ones (0 means "no checksum").
    let sum = if sum == 0 { 0xffff } else { sum };
    out[udp_start + 6..udp_start + 8].copy_from_slice(&sum.to_be_bytes());
}

fn write_tag(out: &mut Vec<u8>, tpid: u16, id: u16) {
    assert!(id <= 0xfff, "VLAN id {id}: above 4095");
    out.extend_from_slice(&tpid.to_be_bytes());
    // Priority 0, DEI 0.
    out.extend_from_slice(&id.to_be_bytes());
}

/// The UDP pseudo-header's sum (RFC 768, RFC 8200 section 8.1): addresses, protocol, length.
fn pseudo_header_sum(src: &[u8], dst: &[u8], udp_len: usize) -> u64 {
    let acc = ones_sum(0, src);
    let acc = ones_sum(acc, dst);
    acc + u64::from(IPPROTO_UDP) + u64::try_from(udp_len).unwrap_or(0)
}

/// Adds `bytes` to `acc` as big-endian 32-bit words, a trailing 16-bit word and a trailing
/// byte padded with zero (RFC 1071: a ones' complement sum may be taken over wider words and
/// folded at the end, since 2^16 is 1 modulo 2^16 - 1). `bytes` starts at an even offset of
/// what is summed; a u64 cannot overflow on any frame.
fn ones_sum(mut acc: u64, bytes: &[u8]) -> u64 {
    let mut words = bytes.chunks_exact(4);
    for w in &mut words {
        acc += u64::from(u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
    }
    let rest = words.remainder();
    let mut pairs = rest.chunks_exact(2);
    for p in &mut pairs {
        acc += u64::from(u16::from_be_bytes([p[0], p[1]]));
    }
    if let [last] = pairs.remainder() {
        acc += u64::from(u16::from_be_bytes([*last, 0]));
    }
    acc
}

/// Folds a wide ones' complement sum to 16 bits.
fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    u16::try_from(acc).unwrap_or(0xffff)
}

/// Parses a MAC written `aa:bb:cc:dd:ee:ff`.
///
/// # Errors
/// A message naming what is wrong.
pub fn parse_mac(s: &str) -> Result<Mac, String> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for byte in &mut mac {
        let part = parts.next().ok_or_else(|| format!("{s:?}: too short"))?;
        *byte = u8::from_str_radix(part, 16).map_err(|e| format!("{s:?}: {e}"))?;
    }
    if parts.next().is_some() {
        return Err(format!("{s:?}: too long"));
    }
    Ok(mac)
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

    /// Checks the tags (TPID, VLAN id) after the MACs and the Ethernet type after them, with the
    /// numbers written out by the caller rather than taken from this module; returns where IP
    /// starts.
    fn assert_ethernet(f: &[u8], tags: &[(u16, u16)], ethertype: u16) -> usize {
        let be16 = |at: usize| u16::from_be_bytes([f[at], f[at + 1]]);
        let mut at = 12;
        for &(tpid, id) in tags {
            assert_eq!(be16(at), tpid, "TPID at {at}");
            assert_eq!(be16(at + 2) & 0xfff, id, "VLAN id at {at}");
            at += 4;
        }
        assert_eq!(be16(at), ethertype, "EtherType at {at}");
        at + 2
    }

    /// The UDP ports and payload of a parsed frame.
    fn udp_of<'a>(p: &SlicedPacket<'a>) -> ((u16, u16), &'a [u8]) {
        let Some(TransportSlice::Udp(udp)) = &p.transport else {
            panic!("not UDP: {p:?}")
        };
        ((udp.source_port(), udp.destination_port()), udp.payload())
    }

    #[test]
    fn untagged_ipv4_fields_and_checksums() {
        let f = UdpFrame::v4(&link(), b"hello\n".to_vec()).build();
        assert_eq!(f.len(), 14 + 20 + 8 + 6);
        assert_eq!(&f[0..6], &[2, 0, 0, 0, 1, 1], "destination MAC");
        assert_eq!(&f[6..12], &[2, 0, 0, 0, 1, 0x10], "source MAC");
        let ip = assert_ethernet(&f, &[], 0x0800);
        assert_eq!(f[ip + 8], 64, "TTL");
        assert_checksums(&f, ip);
        let p = SlicedPacket::from_ethernet(&f).unwrap();
        let Some(NetSlice::Ipv4(ip)) = &p.net else {
            panic!("not IPv4: {p:?}")
        };
        assert_eq!(ip.header().source_addr(), Ipv4Addr::new(10, 1, 0, 10));
        assert_eq!(ip.header().destination_addr(), Ipv4Addr::new(10, 1, 0, 1));
        assert_eq!(udp_of(&p), ((6665, 6666), &b"hello\n"[..]));
    }

    #[test]
    fn single_vlan_ipv4() {
        let f = UdpFrame::v4(&link(), b"tagged".to_vec())
            .vlan(Vlan::Single(42))
            .build();
        let ip = assert_ethernet(&f, &[(0x8100, 42)], 0x0800);
        assert_checksums(&f, ip);
        let p = SlicedPacket::from_ethernet(&f).unwrap();
        let ids: Vec<u16> = p.vlan_ids().iter().map(|v| v.value()).collect();
        assert_eq!(ids, [42]);
        assert_eq!(udp_of(&p), ((6665, 6666), &b"tagged"[..]));
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
        let ip = assert_ethernet(&f, &[(0x88a8, 100), (0x8100, 200)], 0x86dd);
        assert_eq!(f[ip + 7], 32, "hop limit");
        assert_checksums(&f, ip);
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
        assert_eq!(udp_of(&p), ((6665, 6667), &b"qinq"[..]));
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

    #[test]
    fn frames_append_into_one_buffer() {
        let l = link();
        let mut out = vec![0xee; 3];
        let (src, dst) = (
            SocketAddr::new(l.sender_v4.into(), NETCONSOLE_SRC_PORT),
            SocketAddr::new(l.collector_v4.into(), NETCONSOLE_DST_PORT),
        );
        let macs = (l.sender_mac, l.collector_mac);
        write_udp(&mut out, macs, Vlan::None, src, dst, b"first");
        let first_end = out.len();
        write_udp(&mut out, macs, Vlan::None, src, dst, b"second!");
        assert_eq!(&out[..3], &[0xee; 3], "what was there stays");
        assert_eq!(first_end - 3, ETH_LEN + IPV4_LEN + UDP_LEN + 5);
        assert_eq!(
            &out[3..first_end],
            UdpFrame::v4(&l, b"first".to_vec()).build()
        );
        assert_checksums(&out[first_end..], ETH_LEN);
        assert_eq!(&out[out.len() - 7..], b"second!");
    }

    #[test]
    #[should_panic(expected = "VLAN id 4096")]
    fn vlan_id_above_4095_panics() {
        let _ = UdpFrame::v4(&link(), b"x".to_vec())
            .vlan(Vlan::Single(4096))
            .build();
    }

    #[test]
    fn macs_parse() {
        assert_eq!(
            parse_mac("02:00:00:00:91:0a").unwrap(),
            [2, 0, 0, 0, 0x91, 0x0a]
        );
        assert_eq!(
            crate::mac_to_string(parse_mac("ff:FF:00:01:02:03").unwrap()),
            "ff:ff:00:01:02:03"
        );
        assert!(parse_mac("02:00").is_err());
        assert!(parse_mac("02:00:00:00:00:00:00").is_err());
        assert!(parse_mac("zz:00:00:00:00:00").is_err());
        assert!(parse_mac("").is_err());
    }
}
