//! `-w FILE`: every matched frame saved as classic pcap that tcpdump and Wireshark open.
//! (Reading capture files is capture's: `capture::pcap`.)

use std::{
    cell::RefCell,
    fs::File,
    io::{self, Write},
    path::{Path, PathBuf},
    rc::Rc,
};

use chrono::DateTime;
use pcap_file::{
    DataLink,
    pcap::{PcapHeader, PcapPacket, PcapWriter},
};

use super::{OutputError, Sink};
use crate::{capture::Captured, netconsole::Event, wire::Datagram};

/// Snap length written into `-w` files: whole frames.
const WRITE_SNAPLEN: u32 = 65_535;

/// Why a `-w` file could not be created or written.
#[derive(Debug, thiserror::Error)]
pub enum PcapWriteError {
    /// Creating the file failed.
    #[error("cannot open {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// `-w` names a symbolic link and netcon-sniff runs as root.
    #[error(
        "-w {path} is a symbolic link; as root netcon-sniff does not follow one (another user \
         could point it at any file): give the real path, or remove the link"
    )]
    Symlink { path: PathBuf },
    /// Writing the file failed.
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A buffer the pcap writer appends to, emptied into the file after each batch (pcap-file's
/// writer owns its output and has no flush of its own).
#[derive(Clone, Default)]
struct SharedBuffer(Rc<RefCell<Vec<u8>>>);

impl Write for SharedBuffer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.borrow_mut().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Creates (or truncates) `path` for `-w`. As root, a symbolic link at `path` is refused
/// (`O_NOFOLLOW`): in a directory others can write, such as /tmp, a link planted under the name
/// would have root truncate whatever it points at.
fn create_output(path: &Path) -> Result<File, PcapWriteError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    if nix::unistd::geteuid().is_root() {
        options.custom_flags(libc::O_NOFOLLOW);
    }
    options.open(path).map_err(|source| {
        if source.raw_os_error() == Some(libc::ELOOP) {
            PcapWriteError::Symlink {
                path: path.to_owned(),
            }
        } else {
            PcapWriteError::Open {
                path: path.to_owned(),
                source,
            }
        }
    })
}

/// Writes matched frames to a classic pcap file (link type Ethernet, nanosecond timestamps).
pub struct PcapFileWriter {
    path: PathBuf,
    file: Box<dyn Write>,
    buffer: SharedBuffer,
    writer: PcapWriter<SharedBuffer>,
}

impl PcapFileWriter {
    /// Creates (or truncates) `path`, or writes to stdout when it is `-`.
    ///
    /// # Errors
    /// [`PcapWriteError`] when the file cannot be created.
    pub fn create(path: &Path) -> Result<Self, PcapWriteError> {
        let file: Box<dyn Write> = if path == Path::new("-") {
            Box::new(io::stdout())
        } else {
            Box::new(create_output(path)?)
        };
        let buffer = SharedBuffer::default();
        let header = PcapHeader {
            snaplen: WRITE_SNAPLEN,
            datalink: DataLink::ETHERNET,
            ts_resolution: pcap_file::TsResolution::NanoSecond,
            ..PcapHeader::default()
        };
        let writer =
            PcapWriter::with_header(buffer.clone(), header).map_err(|e| PcapWriteError::Write {
                path: path.to_owned(),
                source: io::Error::other(e),
            })?;
        let mut this = Self {
            path: path.to_owned(),
            file,
            buffer,
            writer,
        };
        this.flush()?;
        Ok(this)
    }

    /// Adds one frame.
    ///
    /// # Errors
    /// [`PcapWriteError::Write`].
    pub fn write(&mut self, frame: &Captured) -> Result<(), PcapWriteError> {
        let since_epoch = frame
            .ts
            .signed_duration_since(DateTime::UNIX_EPOCH)
            .to_std()
            .unwrap_or_default();
        let packet = PcapPacket::new(
            since_epoch,
            frame
                .wire_len
                .max(u32::try_from(frame.bytes.len()).unwrap_or(u32::MAX)),
            &frame.bytes,
        );
        self.writer
            .write_packet(&packet)
            .map(|_| ())
            .map_err(|e| PcapWriteError::Write {
                path: self.path.clone(),
                source: io::Error::other(e),
            })
    }

    /// Writes what was added to the file.
    ///
    /// # Errors
    /// [`PcapWriteError::Write`].
    pub fn flush(&mut self) -> Result<(), PcapWriteError> {
        let bytes = std::mem::take(&mut *self.buffer.0.borrow_mut());
        self.file
            .write_all(&bytes)
            .and_then(|()| self.file.flush())
            .map_err(|source| PcapWriteError::Write {
                path: self.path.clone(),
                source,
            })
    }
}

/// `-w` as a sink: every matched frame, written out at the end of each batch. Its first
/// error stops the saving (every other output goes on with the batch) and ends the run.
pub struct PcapSink {
    /// `None` once writing failed.
    writer: Option<PcapFileWriter>,
    /// The error that stopped it, until the pipeline takes it.
    error: Option<PcapWriteError>,
}

impl PcapSink {
    /// Creates (or truncates) `path`, or writes to stdout when it is `-`.
    ///
    /// # Errors
    /// [`PcapWriteError`] when the file cannot be created.
    pub fn create(path: &Path) -> Result<Self, PcapWriteError> {
        Ok(Self {
            writer: Some(PcapFileWriter::create(path)?),
            error: None,
        })
    }

    fn stop(&mut self, error: PcapWriteError) {
        self.writer = None;
        self.error.get_or_insert(error);
    }
}

impl Sink for PcapSink {
    fn event(&mut self, _event: &Event) {}

    fn wants_events(&self) -> bool {
        false
    }

    fn frame(&mut self, frame: &Captured, _datagram: &Datagram<'_>) {
        if let Some(writer) = &mut self.writer
            && let Err(error) = writer.write(frame)
        {
            self.stop(error);
        }
    }

    fn wants_frames(&self) -> bool {
        true
    }

    fn flush(&mut self) {
        if let Some(writer) = &mut self.writer
            && let Err(error) = writer.flush()
        {
            self.stop(error);
        }
    }

    fn take_error(&mut self) -> Option<OutputError> {
        self.error.take().map(OutputError::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::{LinkType, pcap::PcapFileCapture};
    use crate::testing::TempDir;
    use bytes::Bytes;

    fn frame(len: usize) -> Captured {
        Captured {
            ts: DateTime::from_timestamp(1_700_000_000, 123_456_789).unwrap(),
            ifindex: 1,
            wire_len: u32::try_from(len).unwrap(),
            link: LinkType::Ethernet,
            bytes: Bytes::from(vec![7u8; len]),
        }
    }

    #[test]
    fn written_file_reads_back() {
        let dir = TempDir::new("pcap");
        let path = dir.0.join("out.pcap");
        let frame = frame(5);
        let mut writer = PcapFileWriter::create(&path).unwrap();
        writer.write(&frame).unwrap();
        writer.write(&frame).unwrap();
        writer.flush().unwrap();
        let mut reader = PcapFileCapture::open(&path).unwrap();
        let mut out = Vec::new();
        assert!(!reader.read_batch(&mut out).unwrap());
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].ts, frame.ts);
        assert_eq!(out[0].bytes, frame.bytes);
    }

    #[test]
    fn the_sink_writes_frames_at_its_flush_and_reports_a_failure_once() {
        let dir = TempDir::new("pcap-sink");
        let path = dir.0.join("out.pcap");
        let mut sink = PcapSink::create(&path).unwrap();
        assert!(sink.wants_frames() && !sink.wants_events());
        let frame = frame(60);
        let datagram = Datagram {
            src: "10.9.0.10:6665".parse().unwrap(),
            dst: "10.9.0.99:6666".parse().unwrap(),
            payload: b"x",
        };
        sink.frame(&frame, &datagram);
        let header_only = std::fs::metadata(&path).unwrap().len();
        sink.flush();
        assert!(std::fs::metadata(&path).unwrap().len() > header_only);
        assert!(sink.take_error().is_none());

        // A device that is always full: the flush fails, and it is said once.
        let mut full = PcapSink::create(&dir.0.join("full.pcap")).unwrap();
        if let Some(writer) = &mut full.writer {
            writer.file = Box::new(File::options().write(true).open("/dev/full").unwrap());
        }
        full.frame(&frame, &datagram);
        full.flush();
        assert!(matches!(
            full.take_error(),
            Some(OutputError::Pcap(PcapWriteError::Write { .. }))
        ));
        full.frame(&frame, &datagram);
        full.flush();
        assert!(full.take_error().is_none());
    }

    #[test]
    fn a_symlink_is_not_followed_as_root() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let dir = TempDir::new("pcap-link");
        let target = dir.0.join("precious");
        std::fs::write(&target, b"keep me").unwrap();
        let link = dir.0.join("out.pcap");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let error = PcapFileWriter::create(&link).err().map(|e| e.to_string());
        assert!(
            error
                .as_deref()
                .is_some_and(|e| e.contains("symbolic link")),
            "{error:?}"
        );
        assert_eq!(std::fs::read(&target).unwrap(), b"keep me");
    }
}
