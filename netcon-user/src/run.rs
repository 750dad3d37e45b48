//! The pipeline: capture → wire → sink, and its async shell.

use std::{
    future::Future,
    io::{self, Write},
};

use crate::{
    capture::{
        CaptureCounters, Captured,
        promisc::{PromiscError, PromiscGuard},
        xdp::{XdpCapture, XdpError},
    },
    config::{Config, Format},
    sink,
    wire::Datagram,
};

/// Why `run` stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The XDP backend failed.
    #[error(transparent)]
    Xdp(#[from] XdpError),
    /// Promiscuous mode was refused.
    #[error(transparent)]
    Promisc(#[from] PromiscError),
    /// Writing records failed (a closed pipe is reported as this too; `main` exits 0 on it).
    #[error("writing output: {source}")]
    Output {
        #[source]
        source: io::Error,
    },
}

/// What a run did, for the exit summary.
#[derive(Debug, Clone, Copy, Default)]
pub struct Summary {
    /// The capture backend's counters.
    pub capture: CaptureCounters,
    /// Datagrams printed.
    pub datagrams: u64,
    /// Matched frames that were not well-formed UDP.
    pub malformed: u64,
}

/// Turns captured frames into output lines. Sans-IO apart from the writer it is handed.
pub struct Pipeline<'c> {
    config: &'c Config,
    line: String,
    summary: Summary,
}

impl<'c> Pipeline<'c> {
    /// A pipeline for `config`.
    #[must_use]
    pub fn new(config: &'c Config) -> Self {
        Self {
            config,
            line: String::with_capacity(64 * 1024),
            summary: Summary::default(),
        }
    }

    /// Formats `batch` and writes it to `out` in one write, then flushes.
    ///
    /// # Errors
    /// The writer's error.
    pub fn process(&mut self, batch: &[Captured], out: &mut impl Write) -> io::Result<()> {
        self.line.clear();
        for frame in batch {
            match Datagram::parse(&frame.bytes) {
                Ok(datagram) => {
                    self.summary.datagrams += 1;
                    let interface = self.config.interface_name(frame.ifindex);
                    let ifindex_name;
                    let interface = if let Some(name) = interface {
                        name
                    } else {
                        ifindex_name = frame.ifindex.to_string();
                        &ifindex_name
                    };
                    match self.config.format {
                        Format::Raw => {
                            sink::raw::write_datagram(
                                frame.ts,
                                interface,
                                &datagram,
                                &mut self.line,
                            );
                        }
                    }
                }
                Err(error) => {
                    self.summary.malformed += 1;
                    tracing::debug!(ifindex = frame.ifindex, %error, "skipping frame");
                }
            }
        }
        if !self.line.is_empty() {
            out.write_all(self.line.as_bytes())?;
        }
        out.flush()
    }

    /// Counts so far.
    #[must_use]
    pub fn summary(&self) -> Summary {
        self.summary
    }
}

/// Captures on `config`'s interfaces and writes records to stdout until `shutdown` completes;
/// then drains what is already captured and returns the summary.
///
/// # Errors
/// [`RunError`] when capture cannot start or fails, or stdout cannot be written.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<Summary, RunError> {
    let _promisc: Vec<PromiscGuard> = if config.promisc {
        config
            .interfaces
            .iter()
            .map(|i| PromiscGuard::new(&i.name, i.ifindex))
            .collect::<Result<_, _>>()?
    } else {
        Vec::new()
    };
    let mut capture = XdpCapture::open(
        &config.interfaces,
        &config.ports,
        config.xdp_mode,
        config.ring_bytes,
    )?;
    let ports = config
        .ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",");
    for (name, mode) in capture.attached() {
        eprintln!(
            "listening on {name} (xdp, {} mode), ports {ports}",
            mode.as_str()
        );
    }

    let mut pipeline = Pipeline::new(&config);
    let stdout = io::stdout();
    let mut batch = Vec::with_capacity(crate::capture::xdp::MAX_BATCH);
    tokio::pin!(shutdown);
    loop {
        batch.clear();
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            received = capture.recv(&mut batch) => received?,
        }
        pipeline
            .process(&batch, &mut stdout.lock())
            .map_err(|source| RunError::Output { source })?;
    }
    batch.clear();
    capture.drain(&mut batch);
    pipeline
        .process(&batch, &mut stdout.lock())
        .map_err(|source| RunError::Output { source })?;
    let mut summary = pipeline.summary();
    summary.capture = capture.counters()?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Interface, XdpModeChoice};
    use bytes::Bytes;
    use etherparse::PacketBuilder;

    fn config() -> Config {
        Config {
            interfaces: vec![Interface {
                name: "c0".into(),
                ifindex: 7,
            }],
            ports: vec![6666],
            promisc: false,
            xdp_mode: XdpModeChoice::Auto,
            format: Format::Raw,
            ring_bytes: 1 << 20,
        }
    }

    fn udp_frame(payload: &[u8]) -> Bytes {
        let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [0xff; 6])
            .ipv4([10, 9, 0, 10], [10, 9, 0, 99], 64)
            .udp(6665, 6666);
        let mut out = Vec::new();
        b.write(&mut out, payload).unwrap();
        out.into()
    }

    #[test]
    fn batch_becomes_one_line_per_datagram_and_counts_malformed() {
        let config = config();
        let mut pipeline = Pipeline::new(&config);
        let ts = chrono::DateTime::from_timestamp(0, 1000).unwrap();
        let batch = [
            Captured {
                ts,
                ifindex: 7,
                wire_len: 0,
                bytes: udp_frame(b"one\n"),
            },
            Captured {
                ts,
                ifindex: 8,
                wire_len: 0,
                bytes: Bytes::from_static(b"junk"),
            },
            Captured {
                ts,
                ifindex: 9,
                wire_len: 0,
                bytes: udp_frame(b"two"),
            },
        ];
        let mut out = Vec::new();
        pipeline.process(&batch, &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "1970-01-01T00:00:00.000001Z c0 10.9.0.10:6665 > 10.9.0.99:6666 one\\n\n\
             1970-01-01T00:00:00.000001Z 9 10.9.0.10:6665 > 10.9.0.99:6666 two\n"
        );
        assert_eq!(pipeline.summary().datagrams, 2);
        assert_eq!(pipeline.summary().malformed, 1);
    }
}
