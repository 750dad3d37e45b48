//! stdout: a line per decoded record or event (`text`, `json`), or per matched frame (`raw`).
//! A batch goes out in one write, flushed before netcon-sniff waits again.

use std::io::{self, Write};

use super::{OutputError, Sink, color, json, raw, text};
use crate::{
    capture::{Captured, InterfaceLabels},
    netconsole::Event,
    notice::Notice,
    wire::Datagram,
};

/// What stdout gets.
#[derive(Debug, Clone)]
pub enum StdoutFormat {
    /// Decoded records for people ([`text`]), colored by level if `color`.
    Text {
        /// Wrap lines in the colors `dmesg --color` uses ([`color`]).
        color: bool,
    },
    /// Decoded records and events as JSON lines ([`json`]).
    Json,
    /// One line per matched datagram, undecoded ([`raw`]), its interface named by `labels`.
    Raw(InterfaceLabels),
}

/// stdout as a sink. Its first write error (a closed pipe included) ends the run: it is handed
/// to the pipeline once, and nothing is written after it, while every other output goes on.
pub struct StdoutSink<W: Write> {
    out: W,
    format: StdoutFormat,
    /// The batch's lines, written at [`Sink::flush`].
    line: String,
    /// One event's text before it is colored.
    scratch: String,
    /// The write error, until the pipeline takes it.
    error: Option<io::Error>,
    /// A write failed: nothing more is written.
    failed: bool,
}

impl<W: Write> StdoutSink<W> {
    /// Writes `format` lines to `out`.
    pub fn new(out: W, format: StdoutFormat) -> Self {
        Self {
            out,
            format,
            line: String::with_capacity(64 * 1024),
            scratch: String::new(),
            error: None,
            failed: false,
        }
    }

    /// Writes the lines gathered so far in one write, and flushes.
    fn write_lines(&mut self) {
        if !self.failed {
            let written = if self.line.is_empty() {
                Ok(())
            } else {
                self.out.write_all(self.line.as_bytes())
            };
            if let Err(error) = written.and_then(|()| self.out.flush()) {
                self.failed = true;
                self.error = Some(error);
            }
        }
        self.line.clear();
    }
}

impl<W: Write> Sink for StdoutSink<W> {
    fn event(&mut self, event: &Event) {
        match &self.format {
            StdoutFormat::Json => json::write_event(event, &mut self.line),
            StdoutFormat::Text { color } => match color::style(event).filter(|_| *color) {
                Some(style) => {
                    self.scratch.clear();
                    text::write_event(event, &mut self.scratch);
                    color::paint(&self.scratch, style, &mut self.line);
                }
                None => text::write_event(event, &mut self.line),
            },
            StdoutFormat::Raw(_) => {}
        }
    }

    fn wants_events(&self) -> bool {
        !matches!(self.format, StdoutFormat::Raw(_))
    }

    fn frame(&mut self, frame: &Captured, datagram: &Datagram<'_>) {
        if let StdoutFormat::Raw(labels) = &self.format {
            raw::write_datagram(
                frame.ts,
                &labels.label(frame.ifindex),
                datagram,
                &mut self.line,
            );
        }
    }

    fn wants_frames(&self) -> bool {
        matches!(self.format, StdoutFormat::Raw(_))
    }

    fn notice(&mut self, notice: &Notice) {
        match self.format {
            StdoutFormat::Json => json::write_notice(notice, &mut self.line),
            StdoutFormat::Text { .. } | StdoutFormat::Raw(_) => {
                text::write_notice(notice, &mut self.line);
            }
        }
    }

    fn notice_after_close(&mut self, notice: &Notice) {
        self.notice(notice);
        self.write_lines();
    }

    fn flush(&mut self) {
        self.write_lines();
    }

    fn close(&mut self) {
        self.write_lines();
    }

    fn take_error(&mut self) -> Option<OutputError> {
        self.error
            .take()
            .map(|source| OutputError::Stdout { source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        capture::{Interface, LinkType},
        notice::{CaptureLost, LossReason},
        testing::TestOutput as Output,
    };

    fn lost(frames: u64) -> Notice {
        Notice::CaptureLost(CaptureLost {
            noticed: chrono::DateTime::from_timestamp(0, 0).unwrap(),
            interface: "c0".into(),
            reason: LossReason::RingFull,
            frames,
            sender: None,
        })
    }

    fn frame(ifindex: u32) -> (Captured, Datagram<'static>) {
        let captured = Captured {
            ts: chrono::DateTime::from_timestamp(0, 1000).unwrap(),
            ifindex,
            wire_len: 0,
            link: LinkType::Ethernet,
            bytes: bytes::Bytes::new(),
        };
        let datagram = Datagram {
            src: "10.9.0.10:6665".parse().unwrap(),
            dst: "10.9.0.99:6666".parse().unwrap(),
            payload: b"one\n",
        };
        (captured, datagram)
    }

    #[test]
    fn raw_writes_frames_named_by_interface_in_one_write_per_flush() {
        let out = Output::default();
        let labels = InterfaceLabels::new(
            &[Interface {
                name: "c0".into(),
                ifindex: 7,
            }],
            false,
        );
        let mut sink = StdoutSink::new(out.clone(), StdoutFormat::Raw(labels));
        assert!(sink.wants_frames() && !sink.wants_events());
        for ifindex in [7, 9] {
            let (captured, datagram) = frame(ifindex);
            sink.frame(&captured, &datagram);
        }
        assert_eq!(out.writes.get(), 0, "nothing before the flush");
        sink.flush();
        assert_eq!(out.writes.get(), 1);
        assert_eq!(
            out.text(),
            "1970-01-01T00:00:00.000001Z c0 10.9.0.10:6665 > 10.9.0.99:6666 one\\n\n\
             1970-01-01T00:00:00.000001Z 9 10.9.0.10:6665 > 10.9.0.99:6666 one\\n\n"
        );
    }

    #[test]
    fn text_and_json_take_events_not_frames() {
        for format in [StdoutFormat::Text { color: true }, StdoutFormat::Json] {
            let sink = StdoutSink::new(Output::default(), format);
            assert!(sink.wants_events() && !sink.wants_frames());
        }
    }

    #[test]
    fn notices_follow_the_format_and_after_close_go_out_at_once() {
        let out = Output::default();
        let mut sink = StdoutSink::new(out.clone(), StdoutFormat::Json);
        sink.close();
        sink.notice_after_close(&lost(3));
        let line: serde_json::Value = serde_json::from_str(out.text().trim_end()).unwrap();
        assert_eq!(line["type"], "capture_lost");
        assert_eq!(line["frames"], 3);

        let out = Output::default();
        let mut sink = StdoutSink::new(out.clone(), StdoutFormat::Text { color: false });
        sink.notice(&lost(4));
        sink.flush();
        assert!(out.text().contains("4 frames"), "{}", out.text());
    }

    #[test]
    fn a_write_error_is_handed_over_once_and_nothing_is_written_after_it() {
        let out = Output {
            error: Some(io::ErrorKind::BrokenPipe),
            ..Output::default()
        };
        let mut sink = StdoutSink::new(out.clone(), StdoutFormat::Text { color: false });
        sink.notice(&lost(1));
        sink.flush();
        assert!(matches!(
            sink.take_error(),
            Some(OutputError::Stdout { source }) if source.kind() == io::ErrorKind::BrokenPipe
        ));
        assert!(sink.take_error().is_none());
        sink.notice(&lost(2));
        sink.flush();
        sink.notice_after_close(&lost(3));
        assert_eq!(out.writes.get(), 1, "no write after the failure");
        assert!(sink.take_error().is_none());
    }
}
