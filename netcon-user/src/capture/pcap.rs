//! Capture files: `-r FILE` reads pcap or pcapng (offline, no privileges). (Saving them, `-w`,
//! is a sink: `sink::pcap`.)

use std::{
    fs::File,
    io::{self, BufRead, BufReader, Read},
    path::{Path, PathBuf},
    time::Duration,
};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use pcap_file::{
    DataLink, PcapError,
    pcap::PcapReader,
    pcapng::{Block, PcapNgReader, blocks::interface_description::InterfaceDescriptionOption},
};

use super::{Captured, LinkType};

/// pcapng files start with a Section Header Block of this type (either byte order).
const PCAPNG_MAGIC: [u8; 4] = [0x0a, 0x0d, 0x0d, 0x0a];

/// Frames read from a file per batch, so output keeps flowing on large files.
pub const BATCH: usize = 256;

/// Why a capture file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PcapFileError {
    /// Opening the file failed.
    #[error("cannot open {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The file is not pcap or pcapng, or is damaged.
    #[error("{path} is not a readable pcap or pcapng file: {source}")]
    Format {
        path: PathBuf,
        #[source]
        source: PcapError,
    },
}

/// Which of the two capture file formats is being read.
enum FileFormat {
    Pcap {
        reader: PcapReader<Box<dyn Read>>,
        link: Option<LinkType>,
    },
    PcapNg {
        reader: PcapNgReader<Box<dyn Read>>,
        interfaces: Vec<Interface>,
    },
}

/// What we need of a pcapng interface description.
struct Interface {
    link: Option<LinkType>,
    /// Nanoseconds per timestamp unit (`if_tsresol`; default microseconds).
    unit: Unit,
}

#[derive(Clone, Copy)]
enum Unit {
    /// `10^-n` seconds.
    Decimal(u8),
    /// `2^-n` seconds.
    Binary(u8),
}

impl Unit {
    fn to_duration(self, ticks: u64) -> Duration {
        match self {
            Self::Decimal(n) if n <= 9 => {
                Duration::from_nanos(ticks.saturating_mul(10u64.pow(9 - u32::from(n))))
            }
            Self::Decimal(n) => {
                Duration::from_nanos(ticks / 10u64.saturating_pow(u32::from(n) - 9))
            }
            Self::Binary(n) => {
                let n = u32::from(n.min(63));
                let secs = ticks >> n;
                let frac = ticks & ((1u64 << n) - 1);
                let nanos = (u128::from(frac) * 1_000_000_000) >> n;
                Duration::new(secs, u32::try_from(nanos).unwrap_or(0))
            }
        }
    }
}

fn link_type(datalink: DataLink) -> Option<LinkType> {
    match datalink {
        DataLink::ETHERNET => Some(LinkType::Ethernet),
        DataLink::LINUX_SLL => Some(LinkType::LinuxSll),
        DataLink::LINUX_SLL2 => Some(LinkType::LinuxSll2),
        _ => None,
    }
}

/// Reads frames from a pcap or pcapng file (or stdin).
pub struct PcapFileCapture {
    path: PathBuf,
    format: FileFormat,
    /// Frames of link types netcon cannot decode (skipped).
    pub skipped: u64,
    /// Frames read.
    pub read: u64,
    /// An error met after some frames of a batch: reported on the next call, so the frames
    /// before the damage are not lost (a `tcpdump -w -` that died mid-write).
    pending_error: Option<PcapFileError>,
}

impl PcapFileCapture {
    /// Opens `path`, or stdin when it is `-`, and reads its header.
    ///
    /// # Errors
    /// [`PcapFileError`] when it cannot be opened or is neither pcap nor pcapng.
    pub fn open(path: &Path) -> Result<Self, PcapFileError> {
        let open_error = |source| PcapFileError::Open {
            path: path.to_owned(),
            source,
        };
        let input: Box<dyn Read> = if path == Path::new("-") {
            Box::new(io::stdin())
        } else {
            Box::new(File::open(path).map_err(open_error)?)
        };
        let mut input = BufReader::with_capacity(1 << 16, input);
        let magic = input
            .fill_buf()
            .map_err(open_error)?
            .get(..4)
            .map(<[u8]>::to_vec);
        let input: Box<dyn Read> = Box::new(input);
        let format_error = |source| PcapFileError::Format {
            path: path.to_owned(),
            source,
        };
        let format = if magic.as_deref() == Some(&PCAPNG_MAGIC[..]) {
            FileFormat::PcapNg {
                reader: PcapNgReader::new(input).map_err(format_error)?,
                interfaces: Vec::new(),
            }
        } else {
            let reader = PcapReader::new(input).map_err(format_error)?;
            let link = link_type(reader.header().datalink);
            if link.is_none() {
                tracing::warn!(datalink = ?reader.header().datalink, "unsupported link type: no frame will decode");
            }
            FileFormat::Pcap { reader, link }
        };
        Ok(Self {
            path: path.to_owned(),
            format,
            skipped: 0,
            read: 0,
            pending_error: None,
        })
    }

    /// Appends up to [`BATCH`] frames; returns `false` at the end of the file.
    ///
    /// # Errors
    /// [`PcapFileError::Format`] when the file is damaged.
    pub fn read_batch(&mut self, out: &mut Vec<Captured>) -> Result<bool, PcapFileError> {
        if let Some(error) = self.pending_error.take() {
            return Err(error);
        }
        let before = out.len();
        match self.read_frames(out) {
            Err(error) if out.len() > before => {
                self.pending_error = Some(error);
                Ok(true)
            }
            result => result,
        }
    }

    fn read_frames(&mut self, out: &mut Vec<Captured>) -> Result<bool, PcapFileError> {
        let format_error = |source| PcapFileError::Format {
            path: self.path.clone(),
            source,
        };
        for _ in 0..BATCH {
            let frame = match &mut self.format {
                FileFormat::Pcap { reader, link } => match reader.next_packet() {
                    None => return Ok(false),
                    Some(packet) => {
                        let packet = packet.map_err(format_error)?;
                        link.map(|link| {
                            (
                                link,
                                0,
                                packet.timestamp,
                                packet.orig_len,
                                Bytes::copy_from_slice(&packet.data),
                            )
                        })
                    }
                },
                FileFormat::PcapNg { reader, interfaces } => match reader.next_block() {
                    None => return Ok(false),
                    Some(block) => match block.map_err(format_error)? {
                        Block::InterfaceDescription(idb) => {
                            let unit = idb
                                .options
                                .iter()
                                .find_map(|o| match o {
                                    InterfaceDescriptionOption::IfTsResol(r) if r & 0x80 == 0 => {
                                        Some(Unit::Decimal(*r))
                                    }
                                    InterfaceDescriptionOption::IfTsResol(r) => {
                                        Some(Unit::Binary(r & 0x7f))
                                    }
                                    _ => None,
                                })
                                .unwrap_or(Unit::Decimal(6));
                            interfaces.push(Interface {
                                link: link_type(idb.linktype),
                                unit,
                            });
                            continue;
                        }
                        Block::EnhancedPacket(epb) => {
                            let interface = interfaces
                                .get(usize::try_from(epb.interface_id).unwrap_or(usize::MAX));
                            interface.and_then(|i| {
                                // pcap-file 2 stores the raw tick count as nanoseconds.
                                let ticks =
                                    u64::try_from(epb.timestamp.as_nanos()).unwrap_or(u64::MAX);
                                Some((
                                    i.link?,
                                    epb.interface_id,
                                    i.unit.to_duration(ticks),
                                    epb.original_len,
                                    Bytes::copy_from_slice(&epb.data),
                                ))
                            })
                        }
                        Block::SimplePacket(spb) => interfaces.first().and_then(|i| {
                            Some((
                                i.link?,
                                0,
                                Duration::ZERO,
                                spb.original_len,
                                Bytes::copy_from_slice(&spb.data),
                            ))
                        }),
                        _ => continue,
                    },
                },
            };
            self.read += 1;
            match frame {
                Some((link, interface, ts, wire_len, bytes)) => out.push(Captured {
                    ts: to_utc(ts),
                    ifindex: interface,
                    wire_len,
                    link,
                    bytes,
                }),
                None => self.skipped += 1,
            }
        }
        Ok(true)
    }
}

fn to_utc(since_epoch: Duration) -> DateTime<Utc> {
    DateTime::from_timestamp(
        i64::try_from(since_epoch.as_secs()).unwrap_or(i64::MAX),
        since_epoch.subsec_nanos(),
    )
    .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TempDir;

    #[test]
    fn frames_before_a_truncation_are_kept() {
        let dir = TempDir::new("pcap-cut");
        let whole = dir.0.join("whole.pcap");
        let ts = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let frame = Captured {
            ts,
            ifindex: 1,
            wire_len: 100,
            link: LinkType::Ethernet,
            bytes: Bytes::from(vec![7u8; 100]),
        };
        let mut writer = crate::sink::pcap::PcapFileWriter::create(&whole).unwrap();
        for _ in 0..3 {
            writer.write(&frame).unwrap();
        }
        writer.flush().unwrap();
        let bytes = std::fs::read(&whole).unwrap();
        let cut = dir.0.join("cut.pcap");
        std::fs::write(&cut, &bytes[..bytes.len() - 50]).unwrap();
        let mut reader = PcapFileCapture::open(&cut).unwrap();
        let mut out = Vec::new();
        assert!(reader.read_batch(&mut out).unwrap(), "frames first");
        assert_eq!(out.len(), 2);
        assert!(matches!(
            reader.read_batch(&mut out),
            Err(PcapFileError::Format { .. })
        ));
    }

    #[test]
    fn garbage_is_a_format_error() {
        let dir = TempDir::new("pcap-bad");
        let path = dir.0.join("bad.pcap");
        std::fs::write(&path, b"this is not a capture file at all").unwrap();
        assert!(matches!(
            PcapFileCapture::open(&path),
            Err(PcapFileError::Format { .. })
        ));
    }

    #[test]
    fn units_convert() {
        assert_eq!(
            Unit::Decimal(6).to_duration(1_500_000),
            Duration::from_millis(1500)
        );
        assert_eq!(Unit::Decimal(9).to_duration(7), Duration::from_nanos(7));
        assert_eq!(Unit::Binary(1).to_duration(3), Duration::from_millis(1500));
    }
}
