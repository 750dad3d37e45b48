//! A small classic pcap reader, written independently of the binary's (which uses `pcap-file`),
//! so that comparing what `netcon-sniff` prints with what a file holds is not the binary checking
//! itself. Format: <https://www.ietf.org/archive/id/draft-ietf-opsawg-pcap-04.html>.

use std::path::Path;

/// `LINKTYPE_ETHERNET`.
pub const LINKTYPE_ETHERNET: u32 = 1;

/// Magic numbers as read little-endian: microsecond and nanosecond timestamps.
const MAGIC_MICROS: u32 = 0xa1b2_c3d4;
const MAGIC_NANOS: u32 = 0xa1b2_3c4d;
const FILE_HEADER_LEN: usize = 24;
const RECORD_HEADER_LEN: usize = 16;

/// One captured frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcapRecord {
    /// Seconds since the Unix epoch.
    pub ts_sec: u32,
    /// Nanoseconds within the second (microsecond files are scaled up).
    pub ts_nsec: u32,
    /// Length of the frame on the wire.
    pub orig_len: u32,
    /// The captured bytes.
    pub data: Vec<u8>,
}

/// A whole classic pcap file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcapFile {
    /// Link type of every record.
    pub link_type: u32,
    /// Snap length from the header.
    pub snaplen: u32,
    /// Whether timestamps are in nanoseconds (else microseconds).
    pub nanos: bool,
    /// The records in file order.
    pub records: Vec<PcapRecord>,
}

impl PcapFile {
    /// Reads and parses `path`.
    ///
    /// # Panics
    /// If the file cannot be read or is not classic pcap.
    #[must_use]
    pub fn read(path: &Path) -> PcapFile {
        let bytes =
            std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        PcapFile::parse(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// Parses a classic pcap file in either byte order.
    ///
    /// # Errors
    /// A description of what is wrong.
    ///
    /// # Panics
    /// Never: slices are taken after their lengths are checked.
    pub fn parse(bytes: &[u8]) -> Result<PcapFile, String> {
        let header = bytes
            .get(..FILE_HEADER_LEN)
            .ok_or("shorter than a pcap file header")?;
        let magic = u32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
        let (big_endian, nanos) = match (magic, magic.swap_bytes()) {
            (MAGIC_MICROS, _) => (false, false),
            (MAGIC_NANOS, _) => (false, true),
            (_, MAGIC_MICROS) => (true, false),
            (_, MAGIC_NANOS) => (true, true),
            _ => return Err(format!("not classic pcap (magic {magic:#010x})")),
        };
        let u32_at = |b: &[u8], at: usize| {
            let word: [u8; 4] = b[at..at + 4].try_into().expect("4 bytes");
            if big_endian {
                u32::from_be_bytes(word)
            } else {
                u32::from_le_bytes(word)
            }
        };
        let snaplen = u32_at(header, 16);
        let link_type = u32_at(header, 20) & 0x0fff_ffff;
        let mut records = Vec::new();
        let mut rest = &bytes[FILE_HEADER_LEN..];
        while !rest.is_empty() {
            let n = records.len();
            let rh = rest
                .get(..RECORD_HEADER_LEN)
                .ok_or_else(|| format!("record {n}: truncated header"))?;
            let (seconds, fraction) = (u32_at(rh, 0), u32_at(rh, 4));
            let incl = usize::try_from(u32_at(rh, 8)).expect("u32 fits in usize");
            let orig_len = u32_at(rh, 12);
            let data = rest
                .get(RECORD_HEADER_LEN..RECORD_HEADER_LEN + incl)
                .ok_or_else(|| format!("record {n}: {incl} bytes announced, file ends first"))?;
            let ts_nsec = if nanos { fraction } else { fraction * 1000 };
            if ts_nsec >= 1_000_000_000 {
                return Err(format!(
                    "record {n}: sub-second part {fraction} out of range"
                ));
            }
            records.push(PcapRecord {
                ts_sec: seconds,
                ts_nsec,
                orig_len,
                data: data.to_vec(),
            });
            rest = &rest[RECORD_HEADER_LEN + incl..];
        }
        Ok(PcapFile {
            link_type,
            snaplen,
            nanos,
            records,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(big_endian: bool, magic: u32, records: &[(u32, u32, &[u8])]) -> Vec<u8> {
        let w = |v: u32| {
            if big_endian {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            }
        };
        let mut out = Vec::new();
        out.extend_from_slice(&w(magic));
        out.extend_from_slice(
            &(if big_endian {
                [0, 2, 0, 4]
            } else {
                [2, 0, 4, 0]
            }),
        );
        out.extend_from_slice(&[0; 8]);
        out.extend_from_slice(&w(65_535));
        out.extend_from_slice(&w(LINKTYPE_ETHERNET));
        for (sec, frac, data) in records {
            out.extend_from_slice(&w(*sec));
            out.extend_from_slice(&w(*frac));
            let len = u32::try_from(data.len()).unwrap();
            out.extend_from_slice(&w(len));
            out.extend_from_slice(&w(len + 1));
            out.extend_from_slice(data);
        }
        out
    }

    #[test]
    fn reads_both_byte_orders_and_resolutions() {
        for be in [false, true] {
            let f =
                PcapFile::parse(&file(be, MAGIC_MICROS, &[(7, 5, b"ab"), (8, 0, b"")])).unwrap();
            assert_eq!((f.link_type, f.snaplen, f.nanos), (1, 65_535, false));
            assert_eq!(f.records.len(), 2);
            assert_eq!(
                f.records[0],
                PcapRecord {
                    ts_sec: 7,
                    ts_nsec: 5000,
                    orig_len: 3,
                    data: b"ab".to_vec()
                }
            );
            let f = PcapFile::parse(&file(be, MAGIC_NANOS, &[(7, 5, b"x")])).unwrap();
            assert!(f.nanos);
            assert_eq!(f.records[0].ts_nsec, 5);
        }
    }

    #[test]
    fn rejects_damage() {
        let good = file(false, MAGIC_MICROS, &[(1, 2, b"abc")]);
        assert!(PcapFile::parse(&good[..good.len() - 1]).is_err());
        assert!(PcapFile::parse(&good[..30]).is_err());
        assert!(PcapFile::parse(&good[..10]).is_err());
        assert!(PcapFile::parse(b"garbage garbage garbage garbage").is_err());
    }
}
