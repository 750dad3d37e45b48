//! Ethernet + IPv4/IPv6 + UDP frames, written into a caller's buffer with both checksums filled
//! in, as netconsole sends them (`drivers/net/netconsole.c` via `netpoll_send_udp`: TTL 64,
//! hop limit 32, UDP checksum set, never IP-fragmented).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// A MAC address.
pub type Mac = [u8; 6];

/// Ethernet broadcast, netconsole's default destination MAC.
pub const BROADCAST: Mac = [0xff; 6];

/// Ethernet header length, bytes.
pub const ETH_LEN: usize = 14;
/// IPv4 header length without options, bytes.
pub const IPV4_LEN: usize = 20;
/// IPv6 header length, bytes.
pub const IPV6_LEN: usize = 40;
/// UDP header length, bytes.
pub const UDP_LEN: usize = 8;
/// Largest frame this builder writes: a 1000-byte netconsole payload over IPv6.
pub const MAX_FRAME: usize = ETH_LEN + IPV6_LEN + UDP_LEN + 1000;

/// TTL netpoll uses (`net/core/netpoll.c`).
const TTL: u8 = 64;
/// Hop limit netpoll uses for IPv6.
const HOP_LIMIT: u8 = 32;

/// The link-layer ends of every frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    /// Source MAC (the sender's interface).
    pub src: Mac,
    /// Destination MAC: the collector's, broadcast, or a foreign unicast one.
    pub dst: Mac,
}

/// Parses `aa:bb:cc:dd:ee:ff`.
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

/// Formats a MAC as `aa:bb:cc:dd:ee:ff`.
#[must_use]
pub fn mac_to_string(mac: Mac) -> String {
    let parts: Vec<String> = mac.iter().map(|b| format!("{b:02x}")).collect();
    parts.join(":")
}

/// Appends one frame carrying `payload` from `src` to `dst` to `out`.
///
/// # Panics
/// If the two addresses are of different families or the payload is over 1000 bytes (callers
/// build netconsole payloads, which never are).
pub fn write_udp(out: &mut Vec<u8>, link: Link, src: SocketAddr, dst: SocketAddr, payload: &[u8]) {
    assert!(
        payload.len() <= 1000,
        "netconsole payloads are at most 1000 bytes"
    );
    let udp_len = u16::try_from(UDP_LEN + payload.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&link.dst);
    out.extend_from_slice(&link.src);
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.extend_from_slice(&0x0800u16.to_be_bytes());
            let ip_start = out.len();
            let total = u16::try_from(IPV4_LEN).unwrap_or(0) + udp_len;
            out.extend_from_slice(&[0x45, 0]);
            out.extend_from_slice(&total.to_be_bytes());
            // Identification 0, don't fragment (netpoll sets IP_DF), TTL, UDP, checksum later.
            out.extend_from_slice(&[0, 0, 0x40, 0, TTL, 17, 0, 0]);
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
            let sum = fold(ones_sum(0, &out[ip_start..]));
            out[ip_start + 10..ip_start + 12].copy_from_slice(&(!sum).to_be_bytes());
            let pseudo = pseudo_v4(s, d, udp_len);
            write_udp_header(out, src.port(), dst.port(), udp_len, pseudo, payload);
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            out.extend_from_slice(&0x86ddu16.to_be_bytes());
            out.extend_from_slice(&[0x60, 0, 0, 0]);
            out.extend_from_slice(&udp_len.to_be_bytes());
            out.extend_from_slice(&[17, HOP_LIMIT]);
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
            let pseudo = pseudo_v6(s, d, udp_len);
            write_udp_header(out, src.port(), dst.port(), udp_len, pseudo, payload);
        }
        (s, d) => panic!("mixed address families: {s} -> {d}"),
    }
}

fn write_udp_header(
    out: &mut Vec<u8>,
    src_port: u16,
    dst_port: u16,
    udp_len: u16,
    pseudo: u32,
    payload: &[u8],
) {
    let start = out.len();
    out.extend_from_slice(&src_port.to_be_bytes());
    out.extend_from_slice(&dst_port.to_be_bytes());
    out.extend_from_slice(&udp_len.to_be_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(payload);
    let sum = !fold(ones_sum(pseudo, &out[start..]));
    // RFC 768: a computed 0 is sent as all ones (0 means "no checksum").
    let sum = if sum == 0 { 0xffff } else { sum };
    out[start + 6..start + 8].copy_from_slice(&sum.to_be_bytes());
}

fn pseudo_v4(s: Ipv4Addr, d: Ipv4Addr, udp_len: u16) -> u32 {
    let acc = ones_sum(0, &s.octets());
    let acc = ones_sum(acc, &d.octets());
    acc + 17 + u32::from(udp_len)
}

fn pseudo_v6(s: Ipv6Addr, d: Ipv6Addr, udp_len: u16) -> u32 {
    let acc = ones_sum(0, &s.octets());
    let acc = ones_sum(acc, &d.octets());
    acc + 17 + u32::from(udp_len)
}

/// Adds `bytes` as big-endian 16-bit words to `acc` (RFC 1071), folding as it goes so that
/// the sum never overflows.
fn ones_sum(acc: u32, bytes: &[u8]) -> u32 {
    let mut acc = u64::from(acc);
    let mut words = bytes.chunks_exact(2);
    for pair in &mut words {
        acc += u64::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    if let [last] = words.remainder() {
        acc += u64::from(u16::from_be_bytes([*last, 0]));
    }
    while acc > 0xffff_ffff {
        acc = (acc & 0xffff_ffff) + (acc >> 32);
    }
    u32::try_from(acc).unwrap_or(u32::MAX)
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    u16::try_from(acc).unwrap_or(0xffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_sum(bytes: &[u8], pseudo: u32) -> u16 {
        fold(ones_sum(pseudo, bytes))
    }

    #[test]
    fn ipv4_frame_has_valid_checksums() {
        let mut out = Vec::new();
        let link = Link {
            src: [2, 0, 0, 0, 0x91, 2],
            dst: BROADCAST,
        };
        let src: SocketAddr = "10.91.1.7:6665".parse().unwrap();
        let dst: SocketAddr = "10.91.0.1:6666".parse().unwrap();
        write_udp(&mut out, link, src, dst, b"6,1,2,-;odd\n");
        assert_eq!(out.len(), ETH_LEN + IPV4_LEN + UDP_LEN + 12);
        assert_eq!(&out[..6], &BROADCAST);
        let ip = &out[ETH_LEN..ETH_LEN + IPV4_LEN];
        assert_eq!(check_sum(ip, 0), 0xffff);
        let udp = &out[ETH_LEN + IPV4_LEN..];
        let (IpAddr::V4(s), IpAddr::V4(d)) = (src.ip(), dst.ip()) else {
            unreachable!()
        };
        let len = u16::try_from(udp.len()).unwrap();
        assert_eq!(check_sum(udp, pseudo_v4(s, d, len)), 0xffff);
    }

    #[test]
    fn ipv6_frame_has_valid_checksum() {
        let mut out = Vec::new();
        let link = Link {
            src: [2; 6],
            dst: [2, 0, 0, 0, 0x91, 1],
        };
        let src: SocketAddr = "[fd00:91::1:5]:6665".parse().unwrap();
        let dst: SocketAddr = "[fd00:91::1]:6666".parse().unwrap();
        write_udp(&mut out, link, src, dst, b"payload");
        let udp = &out[ETH_LEN + IPV6_LEN..];
        let (IpAddr::V6(s), IpAddr::V6(d)) = (src.ip(), dst.ip()) else {
            unreachable!()
        };
        let len = u16::try_from(udp.len()).unwrap();
        assert_eq!(check_sum(udp, pseudo_v6(s, d, len)), 0xffff);
    }

    #[test]
    fn macs_round_trip() {
        let mac = parse_mac("02:00:00:00:91:0a").unwrap();
        assert_eq!(mac, [2, 0, 0, 0, 0x91, 0x0a]);
        assert_eq!(mac_to_string(mac), "02:00:00:00:91:0a");
        assert!(parse_mac("02:00").is_err());
        assert!(parse_mac("02:00:00:00:00:00:00").is_err());
        assert!(parse_mac("zz:00:00:00:00:00").is_err());
    }
}
