//! Helpers shared by the unit tests.

use std::{
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
};

/// A fresh directory under the system temporary directory, removed on drop (also when the test
/// panics).
pub(crate) struct TempDir(pub PathBuf);

impl TempDir {
    /// Creates `netcon-test-<pid>-<n>-<what>`.
    pub(crate) fn new(what: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("netcon-test-{}-{n}-{what}", std::process::id()));
        std::fs::create_dir(&path).unwrap();
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `10.NET.0.LAST`: a private address for a test's made-up sender.
pub(crate) fn ipv4(net: u8, last: u8) -> std::net::IpAddr {
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, net, 0, last))
}

/// The events of `payloads` from sender `10.77.0.10:6665`, decoded at one instant, then
/// flushed.
pub(crate) fn decode_events(payloads: &[&[u8]]) -> Vec<crate::netconsole::Event> {
    use crate::netconsole::{Decoder, DecoderConfig, Incoming};
    let mut decoder = Decoder::new(DecoderConfig::default());
    let mut events = Vec::new();
    let now = std::time::Instant::now();
    for payload in payloads {
        decoder.push(
            now,
            Incoming {
                received: chrono::DateTime::from_timestamp(1_764_280_436, 123_456_000)
                    .unwrap_or_default(),
                ifindex: 3,
                src: std::net::SocketAddr::from(([10, 77, 0, 10], 6665)),
                payload,
            },
            &mut events,
        );
    }
    decoder.flush(&mut events);
    events
}

/// A writer standing in for stdout: its bytes and writes are shared with the test, and with
/// `error` set every write fails with it.
#[derive(Clone, Default)]
pub(crate) struct TestOutput {
    pub bytes: std::rc::Rc<std::cell::RefCell<Vec<u8>>>,
    pub writes: std::rc::Rc<std::cell::Cell<usize>>,
    pub error: Option<std::io::ErrorKind>,
}

impl TestOutput {
    /// What was written, as text.
    pub(crate) fn text(&self) -> String {
        String::from_utf8(self.bytes.borrow().clone()).unwrap()
    }
}

impl std::io::Write for TestOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.writes.set(self.writes.get() + 1);
        if let Some(kind) = self.error {
            return Err(kind.into());
        }
        self.bytes.borrow_mut().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
