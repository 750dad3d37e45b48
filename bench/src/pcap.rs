//! The UDP payloads in a stream of classic pcap (`tcpdump -w -`), so the verifier can count
//! what tcpdump captured the way it counts what socat printed: payload after payload.
//!
//! Only what the bench sends is understood: Ethernet, then IPv4 or IPv6, then UDP. Anything
//! else is skipped. The stream may be cut anywhere between calls; a file truncated by the bench
//! between trials continues with record headers (the global header comes once, at the start).

use netcon_testkit::frame::{ETH_LEN, IPV4_LEN, IPV6_LEN, UDP_LEN};

/// Length of pcap's global header, bytes (pcap-savefile(5)).
const GLOBAL_HEADER_LEN: usize = 24;
/// Length of a record header, bytes.
const RECORD_HEADER_LEN: usize = 16;
/// Magic of a little-endian file, microsecond or nanosecond timestamps.
const MAGIC_LE: [[u8; 4]; 2] = [[0xd4, 0xc3, 0xb2, 0xa1], [0x4d, 0x3c, 0xb2, 0xa1]];
/// Largest record accepted; anything larger means the stream is not what we think.
const MAX_RECORD: usize = 1 << 18;

/// An incremental pcap reader.
#[derive(Debug, Default)]
pub struct PcapStream {
    carry: Vec<u8>,
    header_seen: bool,
    /// Records that were not Ethernet + IP + UDP.
    pub skipped: u64,
}

impl PcapStream {
    /// A reader expecting the global header first.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets a record cut off at the end of what was read (the file was truncated); the
    /// global header is not expected again.
    pub fn reset(&mut self) {
        self.carry.clear();
    }

    /// Takes the next `bytes` of the stream and calls `payload` with each complete record's UDP
    /// payload, in order.
    pub fn feed(&mut self, bytes: &[u8], mut payload: impl FnMut(&[u8])) {
        self.carry.extend_from_slice(bytes);
        let mut at = 0;
        if !self.header_seen {
            if self.carry.len() < GLOBAL_HEADER_LEN {
                return;
            }
            // Big-endian files do not occur here (tcpdump writes host order, x86/arm64 LE);
            // a wrong magic leaves every record skipped, which the verifier reports as loss.
            if !MAGIC_LE.iter().any(|m| self.carry.starts_with(m)) {
                self.skipped += 1;
            }
            self.header_seen = true;
            at = GLOBAL_HEADER_LEN;
        }
        while let Some(head) = self.carry.get(at..at + RECORD_HEADER_LEN) {
            let incl = u32::from_le_bytes([head[8], head[9], head[10], head[11]]) as usize;
            if incl > MAX_RECORD {
                // Lost sync: drop what is buffered rather than misread everything after it.
                self.skipped += 1;
                at = self.carry.len();
                break;
            }
            let start = at + RECORD_HEADER_LEN;
            let Some(frame) = self.carry.get(start..start + incl) else {
                break;
            };
            match udp_payload(frame) {
                Some(p) => payload(p),
                None => self.skipped += 1,
            }
            at = start + incl;
        }
        self.carry.drain(..at);
    }
}

/// The UDP payload of an Ethernet + IPv4/IPv6 + UDP frame.
#[must_use]
pub fn udp_payload(frame: &[u8]) -> Option<&[u8]> {
    let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    let ip = frame.get(ETH_LEN..)?;
    let udp = match ethertype {
        0x0800 => {
            let ihl = usize::from(ip.first()? & 0x0f) * 4;
            (ip.get(9) == Some(&17) && ihl >= IPV4_LEN).then(|| ip.get(ihl..))??
        }
        0x86dd => (ip.get(6) == Some(&17)).then(|| ip.get(IPV6_LEN..))??,
        _ => return None,
    };
    let len = usize::from(u16::from_be_bytes([*udp.get(4)?, *udp.get(5)?]));
    udp.get(UDP_LEN..len.max(UDP_LEN))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; ETH_LEN];
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        let mut ip = [0u8; IPV4_LEN];
        ip[0] = 0x45;
        ip[9] = 17;
        f.extend_from_slice(&ip);
        let len = u16::try_from(UDP_LEN + payload.len()).unwrap();
        f.extend_from_slice(&[0, 1, 0, 2]);
        f.extend_from_slice(&len.to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(payload);
        f
    }

    fn record(frame: &[u8]) -> Vec<u8> {
        let mut r = vec![0u8; 8];
        let len = u32::try_from(frame.len()).unwrap();
        r.extend_from_slice(&len.to_le_bytes());
        r.extend_from_slice(&len.to_le_bytes());
        r.extend_from_slice(frame);
        r
    }

    #[test]
    fn payloads_come_out_whole_however_the_stream_is_cut() {
        let mut stream = MAGIC_LE[0].to_vec();
        stream.extend_from_slice(&[0; GLOBAL_HEADER_LEN - 4]);
        stream.extend(record(&frame(b"one\n")));
        stream.extend(record(b"not ethernet"));
        stream.extend(record(&frame(b"two\n")));
        for cut in 1..stream.len() {
            let mut p = PcapStream::new();
            let mut out = Vec::new();
            p.feed(&stream[..cut], |b| out.extend_from_slice(b));
            p.feed(&stream[cut..], |b| out.extend_from_slice(b));
            assert_eq!(out, b"one\ntwo\n", "cut at {cut}");
            assert_eq!(p.skipped, 1);
        }
    }

    #[test]
    fn a_truncated_file_continues_with_records() {
        let mut p = PcapStream::new();
        let mut head = MAGIC_LE[1].to_vec();
        head.extend_from_slice(&[0; GLOBAL_HEADER_LEN - 4]);
        let mut out = Vec::new();
        p.feed(&head, |b| out.extend_from_slice(b));
        p.feed(&record(&frame(b"after\n")), |b| out.extend_from_slice(b));
        assert_eq!(out, b"after\n");
    }
}
