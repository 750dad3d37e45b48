//! From an Ethernet frame to the UDP datagram inside it.
//!
//! Userspace parses with etherparse (maintained, fuzzed, handles VLAN tags, IPv4 options and
//! IPv6) rather than hand-written offsets. The one exception is the frame nearly every
//! netconsole datagram is, Ethernet II, IPv4 without options, unfragmented, UDP: its few fixed
//! offsets are read directly ([`Datagram::parse_plain_ipv4`]), because etherparse's general
//! slicing was 6% of the reader's time with a thousand senders flat out. Anything else, and any
//! doubt, goes to etherparse; a property test holds the two to the same answer.

use std::net::{IpAddr, SocketAddr};

use etherparse::{NetSlice, SlicedPacket, TransportSlice};

/// What a frame starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkType {
    /// An Ethernet II header (live capture, most files).
    Ethernet,
    /// Linux cooked capture v1 (`tcpdump -i any`).
    LinuxSll,
    /// Linux cooked capture v2.
    LinuxSll2,
}

/// Why a frame is not a UDP datagram we can decode.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The headers are cut short or inconsistent.
    #[error("malformed frame: {source}")]
    Malformed {
        #[source]
        source: etherparse::err::packet::SliceError,
    },
    /// Not IPv4 or IPv6.
    #[error("not an IP packet")]
    NotIp,
    /// IP, but not UDP, or a non-first IP fragment.
    #[error("not a UDP datagram")]
    NotUdp,
}

/// A UDP datagram, borrowed from the frame it came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Datagram<'a> {
    /// Sender address and port.
    pub src: SocketAddr,
    /// Destination address and port (often not this host: see the README).
    pub dst: SocketAddr,
    /// The UDP payload, cut to the UDP length field.
    pub payload: &'a [u8],
}

impl<'a> Datagram<'a> {
    /// Parses an Ethernet II frame with up to two VLAN tags.
    ///
    /// # Errors
    /// [`WireError`] when the frame is not a well-formed IPv4/IPv6 UDP datagram.
    pub fn parse(frame: &'a [u8]) -> Result<Self, WireError> {
        if let Some(datagram) = Self::parse_plain_ipv4(frame) {
            return Ok(datagram);
        }
        Self::from_sliced(
            SlicedPacket::from_ethernet(frame).map_err(|source| WireError::Malformed { source })?,
        )
    }

    /// The common case, by its fixed offsets: Ethernet II (no VLAN tag), IPv4 with a 20-byte
    /// header, not a fragment, UDP whose length fits the IP packet, which fits the frame (a
    /// NIC pads short frames: the IP total length is what counts). `None` for anything else,
    /// which [`Self::parse`] hands to etherparse.
    fn parse_plain_ipv4(frame: &'a [u8]) -> Option<Self> {
        const ETHERNET_LEN: usize = 14;
        const IPV4_LEN: usize = 20;
        const UDP_LEN: usize = 8;
        const ETHERTYPE_IPV4: [u8; 2] = [0x08, 0x00];
        // Version 4, header length 5 words.
        const VERSION_4_IHL_5: u8 = 0x45;
        const PROTOCOL_UDP: u8 = 17;
        // Flags and fragment offset: the "more fragments" bit and the offset (RFC 791).
        const MORE_FRAGMENTS_AND_OFFSET: u16 = 0x3fff;

        let (ethernet, packet) = frame.split_at_checked(ETHERNET_LEN)?;
        if ethernet.get(12..14)? != ETHERTYPE_IPV4 {
            return None;
        }
        let (ip, _) = packet.split_at_checked(IPV4_LEN)?;
        if *ip.first()? != VERSION_4_IHL_5
            || *ip.get(9)? != PROTOCOL_UDP
            || be16(ip, 6)? & MORE_FRAGMENTS_AND_OFFSET != 0
        {
            return None;
        }
        let ip_payload = packet.get(IPV4_LEN..usize::from(be16(ip, 2)?))?;
        let (udp, _) = ip_payload.split_at_checked(UDP_LEN)?;
        // A UDP length below its own header gives a range that ends before it starts: `None`.
        let payload = ip_payload.get(UDP_LEN..usize::from(be16(udp, 4)?))?;
        let address = |at: usize| -> Option<IpAddr> {
            let octets: [u8; 4] = ip.get(at..at + 4)?.try_into().ok()?;
            Some(IpAddr::from(octets))
        };
        Some(Self {
            src: SocketAddr::new(address(12)?, be16(udp, 0)?),
            dst: SocketAddr::new(address(16)?, be16(udp, 2)?),
            payload,
        })
    }

    /// Parses a Linux cooked capture (SLL) frame, as `tcpdump -i any` writes them.
    ///
    /// # Errors
    /// [`WireError`] when the frame is not a well-formed IPv4/IPv6 UDP datagram.
    pub fn parse_linux_sll(frame: &'a [u8]) -> Result<Self, WireError> {
        Self::from_sliced(
            SlicedPacket::from_linux_sll(frame)
                .map_err(|source| WireError::Malformed { source })?,
        )
    }

    /// Parses a frame of the given link type.
    ///
    /// # Errors
    /// [`WireError`] when the frame is not a well-formed IPv4/IPv6 UDP datagram.
    pub fn parse_link(link: LinkType, frame: &'a [u8]) -> Result<Self, WireError> {
        match link {
            LinkType::Ethernet => Self::parse(frame),
            LinkType::LinuxSll => Self::parse_linux_sll(frame),
            LinkType::LinuxSll2 => Self::parse_linux_sll2(frame),
        }
    }

    /// Parses a Linux cooked capture v2 (SLL2) frame: a 20-byte header whose first two bytes
    /// are the `EtherType` (libpcap's `sll2_header`).
    ///
    /// # Errors
    /// [`WireError`] when the frame is not a well-formed IPv4/IPv6 UDP datagram.
    pub fn parse_linux_sll2(frame: &'a [u8]) -> Result<Self, WireError> {
        const SLL2_HEADER_LEN: usize = 20;
        let (header, rest) = frame
            .split_at_checked(SLL2_HEADER_LEN)
            .ok_or(WireError::NotIp)?;
        let ether_type = etherparse::EtherType(u16::from_be_bytes([header[0], header[1]]));
        Self::from_sliced(
            SlicedPacket::from_ether_type(ether_type, rest)
                .map_err(|source| WireError::Malformed { source })?,
        )
    }

    fn from_sliced(packet: SlicedPacket<'a>) -> Result<Self, WireError> {
        let (src_ip, dst_ip): (IpAddr, IpAddr) = match &packet.net {
            Some(NetSlice::Ipv4(ip)) => (
                ip.header().source_addr().into(),
                ip.header().destination_addr().into(),
            ),
            Some(NetSlice::Ipv6(ip)) => (
                ip.header().source_addr().into(),
                ip.header().destination_addr().into(),
            ),
            Some(NetSlice::Arp(_)) | None => return Err(WireError::NotIp),
        };
        match packet.transport {
            Some(TransportSlice::Udp(udp)) => Ok(Self {
                src: SocketAddr::new(src_ip, udp.source_port()),
                dst: SocketAddr::new(dst_ip, udp.destination_port()),
                payload: udp.payload(),
            }),
            _ => Err(WireError::NotUdp),
        }
    }
}

/// The big-endian `u16` at `at` in `bytes`, if it is all there.
fn be16(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{IpHeaders, PacketBuilder, PacketBuilderStep, VlanId};
    use proptest::prelude::*;

    const SRC_MAC: [u8; 6] = [0x52, 0x54, 0, 0x77, 0, 0x10];
    const BROADCAST: [u8; 6] = [0xff; 6];

    fn frame(builder: PacketBuilderStep<IpHeaders>, payload: &[u8]) -> Vec<u8> {
        let builder = builder.udp(6665, 6666);
        let mut out = Vec::with_capacity(builder.size(payload.len()));
        builder.write(&mut out, payload).unwrap();
        out
    }

    /// Shaped like the frames of the real 6.1 capture (`tests/data/ext.pcap`): broadcast
    /// MAC, 10.77.0.10:6665 -> 10.77.0.1:6666, padded by the NIC to the 60-byte Ethernet minimum.
    const REAL_FRAME: &[u8] = b"\xff\xff\xff\xff\xff\xff\x52\x54\x00\x77\x00\x10\x08\x00\
\x45\x00\x00\x24\x00\x00\x00\x00\x40\x11\x66\x25\x0a\x4d\x00\x0a\x0a\x4d\x00\x01\
\x1a\x09\x1a\x0a\x00\x10\x00\x00hi\n\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00";

    #[test]
    fn parses_ipv4_broadcast_frame_and_strips_ethernet_padding() {
        let d = Datagram::parse(REAL_FRAME).unwrap();
        assert_eq!(d.src, "10.77.0.10:6665".parse().unwrap());
        assert_eq!(d.dst, "10.77.0.1:6666".parse().unwrap());
        assert_eq!(d.payload, b"hi\n\0\0\0\0\0");
    }

    #[test]
    fn parses_ipv6() {
        let b = PacketBuilder::ethernet2(SRC_MAC, BROADCAST).ipv6(
            "fd00:1::10".parse::<std::net::Ipv6Addr>().unwrap().octets(),
            "fd00:1::1".parse::<std::net::Ipv6Addr>().unwrap().octets(),
            32,
        );
        let f = frame(b, b"6,1,2,-;x\n");
        let d = Datagram::parse(&f).unwrap();
        assert_eq!(d.src, "[fd00:1::10]:6665".parse().unwrap());
        assert_eq!(d.dst.port(), 6666);
        assert_eq!(d.payload, b"6,1,2,-;x\n");
    }

    #[test]
    fn parses_two_vlan_tags() {
        let b = PacketBuilder::ethernet2(SRC_MAC, BROADCAST)
            .double_vlan(VlanId::try_new(100).unwrap(), VlanId::try_new(200).unwrap())
            .ipv4([10, 1, 0, 10], [10, 1, 0, 99], 64);
        let f = frame(b, b"payload");
        assert_eq!(Datagram::parse(&f).unwrap().payload, b"payload");
    }

    #[test]
    fn rejects_tcp() {
        let b = PacketBuilder::ethernet2(SRC_MAC, BROADCAST)
            .ipv4([10, 1, 0, 10], [10, 1, 0, 1], 64)
            .tcp(1, 2, 3, 4);
        let mut f = Vec::new();
        b.write(&mut f, b"x").unwrap();
        assert!(matches!(Datagram::parse(&f), Err(WireError::NotUdp)));
    }

    #[test]
    fn rejects_arp_and_truncated() {
        let mut arp = REAL_FRAME.to_vec();
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert!(Datagram::parse(&arp).is_err());
        for cut in 0..42 {
            assert!(Datagram::parse(&REAL_FRAME[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn the_common_frame_takes_the_fixed_offsets() {
        let d = Datagram::parse_plain_ipv4(REAL_FRAME).unwrap();
        assert_eq!(
            d,
            Datagram::from_sliced(SlicedPacket::from_ethernet(REAL_FRAME).unwrap()).unwrap()
        );
    }

    /// [`REAL_FRAME`] with a few of its header bytes set to values that matter to a parser
    /// (lengths, version and header length, flags, protocol, Ethernet type), then cut or extended.
    fn near_real_frame() -> impl Strategy<Value = Vec<u8>> {
        let field = prop_oneof![
            Just(0u8),
            Just(1),
            Just(0x08),
            Just(0x11),
            Just(0x14),
            Just(0x1c),
            Just(0x20),
            Just(0x24),
            Just(0x40),
            Just(0x45),
            Just(0x46),
            Just(0x81),
            Just(0xff),
            any::<u8>(),
        ];
        // Ethernet type, IPv4 version/IHL, total length, flags/offset, protocol, UDP length.
        let at = prop::sample::select(vec![12usize, 13, 14, 16, 17, 20, 21, 23, 38, 39]);
        (
            prop::collection::vec((at, field), 0..4),
            0usize..80,
            prop::collection::vec(any::<u8>(), 0..20),
        )
            .prop_map(|(edits, cut, tail)| {
                let mut f = REAL_FRAME.to_vec();
                for (at, value) in edits {
                    f[at] = value;
                }
                f.truncate(f.len().saturating_sub(cut));
                f.extend(tail);
                f
            })
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Datagram::parse(&bytes);
            let _ = Datagram::parse_linux_sll(&bytes);
        }

        /// Where the fixed offsets give an answer, etherparse gives the same one.
        #[test]
        fn fixed_offsets_agree_with_etherparse(frame in prop_oneof![
            near_real_frame(),
            proptest::collection::vec(any::<u8>(), 0..120),
        ]) {
            if let Some(ours) = Datagram::parse_plain_ipv4(&frame) {
                let theirs = SlicedPacket::from_ethernet(&frame)
                    .map_err(|source| WireError::Malformed { source })
                    .and_then(Datagram::from_sliced);
                prop_assert!(matches!(theirs, Ok(d) if d == ours), "{frame:02x?}: {ours:?} against {theirs:?}");
            }
        }
    }
}
